//! Tokenizer for CESQL, after `CESQLLexer.g4`.
//!
//! Differences from the ANTLR grammar, on purpose:
//! * `-` and `+` are always operator tokens; the parser folds a sign directly
//!   in front of an integer literal into the literal. So `5-3` is a
//!   subtraction (the ANTLR lexer would make it `5` `-3`, a syntax error) and
//!   `-2147483648` is still a valid literal.
//! * Keywords are matched case-insensitively (the grammar leaves that to a
//!   case-changing input stream).

use super::ParseError;

/// A token kind; payloads are owned because literals end up in the AST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    Not,
    Like,
    Exists,
    In,
    True,
    False,
    /// Digits only; the magnitude, saturated at `u64::MAX` (range is checked
    /// by the parser, which knows about a leading `-`).
    Int(u64),
    /// A string literal, quotes and escapes already resolved.
    Str(String),
    /// `[A-Za-z0-9]+` with at least one letter: an attribute or function name.
    Ident(String),
    /// `[A-Za-z][A-Za-z_]*` containing `_`: only valid as a function name.
    FnName(String),
    Eof,
}

impl Tok {
    /// How the token is named in "expected …, found …" messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::Plus => "'+'".into(),
            Tok::Minus => "'-'".into(),
            Tok::Star => "'*'".into(),
            Tok::Slash => "'/'".into(),
            Tok::Percent => "'%'".into(),
            Tok::Eq => "'='".into(),
            Tok::NotEq => "'!='".into(),
            Tok::Lt => "'<'".into(),
            Tok::Le => "'<='".into(),
            Tok::Gt => "'>'".into(),
            Tok::Ge => "'>='".into(),
            Tok::And => "AND".into(),
            Tok::Or => "OR".into(),
            Tok::Xor => "XOR".into(),
            Tok::Not => "NOT".into(),
            Tok::Like => "LIKE".into(),
            Tok::Exists => "EXISTS".into(),
            Tok::In => "IN".into(),
            Tok::True => "TRUE".into(),
            Tok::False => "FALSE".into(),
            Tok::Int(n) => format!("integer {n}"),
            Tok::Str(_) => "string literal".into(),
            Tok::Ident(s) | Tok::FnName(s) => format!("identifier '{s}'"),
            Tok::Eof => "end of input".into(),
        }
    }
}

/// A token and the byte offset where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub offset: usize,
}

/// 1-based character column of a byte offset.
pub(crate) fn column(src: &str, offset: usize) -> usize {
    src.get(..offset).map_or(0, |s| s.chars().count()) + 1
}

fn keyword(word: &str) -> Option<Tok> {
    const KEYWORDS: [(&str, Tok); 9] = [
        ("AND", Tok::And),
        ("OR", Tok::Or),
        ("XOR", Tok::Xor),
        ("NOT", Tok::Not),
        ("LIKE", Tok::Like),
        ("EXISTS", Tok::Exists),
        ("IN", Tok::In),
        ("TRUE", Tok::True),
        ("FALSE", Tok::False),
    ];
    KEYWORDS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .map(|(_, t)| t.clone())
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, msg: String| ParseError::new(column(src, at), msg);
    while i < bytes.len() {
        let start = i;
        let b = bytes[i];
        let single = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => Some(Tok::LParen),
            b')' => Some(Tok::RParen),
            b',' => Some(Tok::Comma),
            b'+' => Some(Tok::Plus),
            b'-' => Some(Tok::Minus),
            b'*' => Some(Tok::Star),
            b'/' => Some(Tok::Slash),
            b'%' => Some(Tok::Percent),
            b'=' => Some(Tok::Eq),
            _ => None,
        };
        let tok = if let Some(t) = single {
            i += 1;
            t
        } else {
            match b {
                b'!' if bytes.get(i + 1) == Some(&b'=') => {
                    i += 2;
                    Tok::NotEq
                }
                b'<' => match bytes.get(i + 1) {
                    Some(b'=') => {
                        i += 2;
                        Tok::Le
                    }
                    Some(b'>') => {
                        i += 2;
                        Tok::NotEq
                    }
                    _ => {
                        i += 1;
                        Tok::Lt
                    }
                },
                b'>' => {
                    if bytes.get(i + 1) == Some(&b'=') {
                        i += 2;
                        Tok::Ge
                    } else {
                        i += 1;
                        Tok::Gt
                    }
                }
                b'\'' | b'"' => {
                    let (s, end) = string_literal(src, i)?;
                    i = end;
                    Tok::Str(s)
                }
                b if b.is_ascii_alphanumeric() || b == b'_' => {
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_')
                    {
                        i += 1;
                    }
                    word(&src[start..i]).map_err(|m| err(start, m.to_string()))?
                }
                _ => {
                    let c = src[i..].chars().next().unwrap_or('?');
                    return Err(err(i, format!("unexpected character '{c}'")));
                }
            }
        };
        out.push(Token { tok, offset: start });
    }
    out.push(Token {
        tok: Tok::Eof,
        offset: src.len(),
    });
    Ok(out)
}

/// A word that is neither a name, a function name nor a number.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid name '{0}': attribute names are letters and digits, \
     function names start with a letter and contain only letters and '_'"
)]
struct InvalidName(String);

/// Classifies a run of `[A-Za-z0-9_]`.
fn word(w: &str) -> Result<Tok, InvalidName> {
    let has_digit = w.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = w.bytes().any(|b| b.is_ascii_alphabetic());
    let has_underscore = w.contains('_');
    if !has_alpha && !has_underscore {
        // Saturate: out-of-range literals are reported by the parser.
        let n = w.bytes().fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return Ok(Tok::Int(n));
    }
    if has_underscore {
        let starts_alpha = w.as_bytes()[0].is_ascii_alphabetic();
        if has_digit || !starts_alpha {
            return Err(InvalidName(w.to_owned()));
        }
        return Ok(Tok::FnName(w.to_string()));
    }
    if let Some(k) = keyword(w) {
        return Ok(k);
    }
    Ok(Tok::Ident(w.to_string()))
}

/// Reads a quoted string starting at byte `start` (the opening quote).
///
/// Escapes: `\q` (q = the delimiting quote) and a doubled `qq` give `q`;
/// `\\` gives `\`; any other `\x` is kept verbatim, so that `LIKE` patterns
/// keep their `\%` and `\_` escapes. Returns the value and the end offset.
fn string_literal(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, n)) if n == quote || n == '\\' => out.push(n),
                Some((_, n)) => {
                    out.push('\\');
                    out.push(n);
                }
                None => break,
            }
        } else if c == quote {
            if matches!(chars.peek(), Some((_, n)) if *n == quote) {
                chars.next();
                out.push(quote);
            } else {
                return Ok((out, chars.peek().map_or(src.len(), |(j, _)| start + 1 + j)));
            }
        } else {
            out.push(c);
        }
    }
    Err(ParseError::new(
        column(src, start),
        format!("unterminated string literal (missing closing {quote})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        tokenize(src)
            .expect("tokenize")
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn operators_and_keywords() {
        assert_eq!(
            toks("a<>b != c <= >= < > = and Or xOR not LIKE exists In tRuE false"),
            vec![
                Tok::Ident("a".into()),
                Tok::NotEq,
                Tok::Ident("b".into()),
                Tok::NotEq,
                Tok::Ident("c".into()),
                Tok::Le,
                Tok::Ge,
                Tok::Lt,
                Tok::Gt,
                Tok::Eq,
                Tok::And,
                Tok::Or,
                Tok::Xor,
                Tok::Not,
                Tok::Like,
                Tok::Exists,
                Tok::In,
                Tok::True,
                Tok::False,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn numbers_signs_and_names() {
        assert_eq!(
            toks("5-3 +7 a1 1a CONCAT_WS(x)"),
            vec![
                Tok::Int(5),
                Tok::Minus,
                Tok::Int(3),
                Tok::Plus,
                Tok::Int(7),
                Tok::Ident("a1".into()),
                Tok::Ident("1a".into()),
                Tok::FnName("CONCAT_WS".into()),
                Tok::LParen,
                Tok::Ident("x".into()),
                Tok::RParen,
                Tok::Eof
            ]
        );
        assert_eq!(toks("99999999999999999999999")[0], Tok::Int(u64::MAX));
    }

    #[test]
    fn string_escapes() {
        assert_eq!(toks(r#"'a"b\'c'"#)[0], Tok::Str(r#"a"b'c"#.into()));
        assert_eq!(toks(r#""a'b\"c""#)[0], Tok::Str(r#"a'b"c"#.into()));
        assert_eq!(toks(r"'ab\c'")[0], Tok::Str(r"ab\c".into()));
        assert_eq!(toks(r"'a\_b\%'")[0], Tok::Str(r"a\_b\%".into()));
        assert_eq!(toks(r"'a\\'")[0], Tok::Str(r"a\".into()));
        assert_eq!(toks("'it''s'")[0], Tok::Str("it's".into()));
        assert_eq!(toks("''")[0], Tok::Str(String::new()));
        assert_eq!(toks("'é' x")[1], Tok::Ident("x".into()));
    }

    #[test]
    fn errors_have_columns() {
        let e = tokenize("a = 'abc").unwrap_err();
        assert_eq!(e.column(), 5);
        assert!(e.message().contains("unterminated"));
        let e = tokenize(r"'abc\'").unwrap_err();
        assert_eq!(e.column(), 1);
        let e = tokenize("é = #").unwrap_err();
        assert_eq!(e.column(), 1);
        let e = tokenize("a = #").unwrap_err();
        assert_eq!((e.column(), e.message()), (5, "unexpected character '#'"));
        assert!(tokenize("a_1(x)").is_err());
        assert!(tokenize("_a(x)").is_err());
        assert!(tokenize("a ! b").is_err());
    }
}
