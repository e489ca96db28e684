//! `LIKE` patterns, compiled once at parse time.
//!
//! `%` matches any run of characters, `_` exactly one character (a Unicode
//! scalar value, not a byte). `\%`, `\_` and `\\` match `%`, `_` and `\`
//! literally; a backslash before anything else is itself a literal backslash
//! (so `'ab\c' LIKE 'ab\c'` holds, as the TCK requires).
//!
//! The pattern is split at `%` into segments of literal characters and `_`.
//! The first segment is anchored at the start, the last at the end and the
//! ones in between are matched leftmost-first, which is exact for this
//! pattern language and needs no backtracking and no allocation.

/// One `%`-free piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// `None` is `_`.
    items: Vec<Option<char>>,
    /// The segment as a plain string when it has no `_` (fast path).
    literal: Option<String>,
}

impl Segment {
    fn new(items: Vec<Option<char>>) -> Self {
        let literal = items.iter().copied().collect::<Option<String>>();
        Segment { items, literal }
    }

    /// Length in characters.
    fn len(&self) -> usize {
        self.items.len()
    }

    /// If the segment matches a prefix of `s`, the byte length of that prefix.
    fn match_prefix(&self, s: &str) -> Option<usize> {
        if let Some(lit) = &self.literal {
            return s.starts_with(lit.as_str()).then_some(lit.len());
        }
        let mut chars = s.char_indices();
        for item in &self.items {
            let (_, c) = chars.next()?;
            if let Some(want) = item {
                if *want != c {
                    return None;
                }
            }
        }
        Some(chars.next().map_or(s.len(), |(i, _)| i))
    }

    /// Leftmost match in `s`: the byte offset just past it.
    fn find(&self, s: &str) -> Option<usize> {
        if let Some(lit) = &self.literal {
            return s.find(lit.as_str()).map(|i| i + lit.len());
        }
        s.char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .find_map(|i| self.match_prefix(&s[i..]).map(|n| i + n))
    }
}

/// A compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    source: String,
    /// Segments between `%`s; `segments.len() - 1` is the number of `%` runs.
    segments: Vec<Segment>,
}

impl LikePattern {
    pub(crate) fn new(source: String) -> Self {
        let mut segments = Vec::new();
        let mut items = Vec::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&n @ ('%' | '_' | '\\')) => {
                        chars.next();
                        items.push(Some(n));
                    }
                    _ => items.push(Some('\\')),
                },
                '%' => {
                    segments.push(Segment::new(std::mem::take(&mut items)));
                    while chars.peek() == Some(&'%') {
                        chars.next();
                    }
                }
                '_' => items.push(None),
                c => items.push(Some(c)),
            }
        }
        segments.push(Segment::new(items));
        LikePattern { source, segments }
    }

    /// The pattern text (the string literal's value).
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let (first, rest) = match self.segments.split_first() {
            Some(x) => x,
            None => return text.is_empty(),
        };
        let Some(after_first) = first.match_prefix(text) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            // No `%`: the single segment must cover the whole text.
            return after_first == text.len();
        };
        let tail = &text[after_first..];
        // The last segment covers exactly the last `last.len()` characters.
        let last_start = if last.len() == 0 {
            tail.len()
        } else {
            match tail.char_indices().rev().nth(last.len() - 1) {
                Some((i, _)) => i,
                None => return false,
            }
        };
        if last.match_prefix(&tail[last_start..]) != Some(tail.len() - last_start) {
            return false;
        }
        let mut window = &tail[..last_start];
        for seg in middle {
            match seg.find(window) {
                Some(end) => window = &window[end..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::LikePattern;

    fn like(text: &str, pattern: &str) -> bool {
        LikePattern::new(pattern.to_string()).matches(text)
    }

    #[test]
    fn wildcards() {
        assert!(like("abc", "abc"));
        assert!(!like("abcd", "abc"));
        assert!(like("abc", "a%b%c"));
        assert!(like("azzzbzzzc", "a%b%c"));
        assert!(!like("", "abc"));
        assert!(like("", ""));
        assert!(like("", "%"));
        assert!(like("anything", "%%"));
        assert!(like(".ab.cde.", ".%.%."));
        assert!(!like("ab.cde", ".%.%."));
        assert!(like("azbzc", "a_b_c"));
        assert!(!like("abc", "a_b_c"));
        assert!(like("ab", "_b%"));
        assert!(like("abcd1", "_b%"));
        assert!(!like("b", "_b%"));
        assert!(!like("aBc", "_b%"));
        assert!(like("é", "_"));
        assert!(!like("é", "__"));
        assert!(like("xaéb", "%a_b"));
        assert!(like("aaa", "%a%a%a%"));
        assert!(!like("aa", "%a%a%a%"));
        assert!(like("abab", "%ab"));
        assert!(like("aba", "a%ba"));
        assert!(!like("ab", "a%ba"));
        assert!(like("abba", "a%ba"));
        assert!(like("mississippi", "m%iss%ppi"));
        assert!(like("mississippi", "%s_s%p_"));
    }

    #[test]
    fn escapes() {
        assert!(like("a_b_c", r"a\_b\_c"));
        assert!(!like("azbzc", r"a\_b\_c"));
        assert!(like("a%b%c", r"a\%b\%c"));
        assert!(!like("abc", r"a\%b\%c"));
        assert!(like("abc123123%456_dzf", r"abc%123\%456\_d_f"));
        assert!(like(r"ab\c", r"ab\c"));
        assert!(like(r"a\", r"a\"));
        assert!(like(r"a\xyz", r"a\\%"));
        assert!(!like("ab", r"a\\%"));
    }
}
