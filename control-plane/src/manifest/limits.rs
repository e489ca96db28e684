//! Limits a manifest document must keep, checked on its text in one pass before the
//! YAML parser sees it: the parser's cost grows with the square of the nesting depth
//! (a 195 KiB document nested 100,000 deep took 24 s to be refused), and aliases
//! multiply what a small document expands to.
//!
//! The scan reads just enough YAML to count levels: indentation (and the compact
//! `- `/`? ` entries that open a level on the same line), flow brackets `[` `{`
//! outside quoted scalars, block scalars and comments, and `&anchor`s and `*alias`es
//! where a node starts. It errs on the side of counting: what it cannot tell apart is
//! counted as a level, and the limits are far above what a Broker or Trigger needs.

/// Largest document, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of collections (a Trigger needs about 6).
pub const MAX_DEPTH: usize = 64;
/// Most anchors and aliases together.
pub const MAX_ANCHORS_AND_ALIASES: usize = 100;

/// A limit a document goes over: where (1-based line in the document) and which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exceeded {
    pub line: usize,
    pub message: String,
}

/// Checks `text`, one YAML document, against the limits.
pub(crate) fn check(text: &str) -> Result<(), Exceeded> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(Exceeded {
            line: 1,
            message: format!(
                "the document is {} bytes, over the limit of {MAX_DOCUMENT_BYTES} bytes (1 MiB) for a manifest",
                text.len()
            ),
        });
    }
    let mut scan = Scanner::default();
    for (i, line) in text.lines().enumerate() {
        scan.line(line.as_bytes(), i + 1)?;
    }
    Ok(())
}

#[derive(Default)]
struct Scanner {
    /// Columns of the open block collections (and of nodes after `- `/`? `).
    indents: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    /// The quote of a quoted scalar going on past the end of a line.
    quote: Option<u8>,
    /// Inside a block scalar: lines indented at least this much are its text.
    block_scalar: Option<usize>,
    anchors_and_aliases: usize,
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl Scanner {
    fn depth(&self, line: usize) -> Result<(), Exceeded> {
        if self.indents.len() + self.flow > MAX_DEPTH {
            return Err(Exceeded {
                line,
                message: format!("nested deeper than {MAX_DEPTH} levels, the limit for a manifest"),
            });
        }
        Ok(())
    }

    fn reference(&mut self, line: usize) -> Result<(), Exceeded> {
        self.anchors_and_aliases += 1;
        if self.anchors_and_aliases > MAX_ANCHORS_AND_ALIASES {
            return Err(Exceeded {
                line,
                message: format!(
                    "more than {MAX_ANCHORS_AND_ALIASES} anchors and aliases, the limit for a manifest"
                ),
            });
        }
        Ok(())
    }

    fn line(&mut self, bytes: &[u8], line: usize) -> Result<(), Exceeded> {
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let blank = bytes[indent..].iter().all(|b| is_space(*b));
        if let Some(min) = self.block_scalar {
            if blank || indent >= min {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let mut i = 0;
        if self.quote.is_none() && self.flow == 0 {
            if blank || bytes[indent] == b'#' {
                return Ok(());
            }
            while self.indents.last().is_some_and(|&t| t > indent) {
                self.indents.pop();
            }
            if self.indents.last() != Some(&indent) {
                self.indents.push(indent);
                self.depth(line)?;
            }
            i = indent;
        }
        // At the start of a node (where `[`, quotes, `|`, `&`, `*` are indicators).
        let mut at_node = true;
        let mut prev_space = true;
        // The column of the `- `/`? ` the current node follows, if any.
        let mut entry_col: Option<usize> = None;
        while i < bytes.len() {
            let b = bytes[i];
            if let Some(q) = self.quote {
                if q == b'"' && b == b'\\' {
                    i += 2;
                    continue;
                }
                if b == q {
                    if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    self.quote = None;
                    at_node = false;
                }
                prev_space = false;
                i += 1;
                continue;
            }
            if is_space(b) {
                prev_space = true;
                if self.flow > 0 {
                    at_node = true;
                }
                i += 1;
                continue;
            }
            if b == b'#' && prev_space {
                break;
            }
            prev_space = false;
            let next_is_space = bytes.get(i + 1).is_none_or(|n| is_space(*n));
            if self.flow > 0 {
                // In a flow collection every bracket outside quotes is an indicator.
                match b {
                    b'[' | b'{' => {
                        self.flow += 1;
                        self.depth(line)?;
                        at_node = true;
                    }
                    b']' | b'}' => {
                        self.flow -= 1;
                        at_node = false;
                    }
                    b',' | b':' => at_node = true,
                    b'"' | b'\'' if at_node => self.quote = Some(b),
                    b'&' | b'*' if at_node => {
                        self.reference(line)?;
                        while bytes
                            .get(i + 1)
                            .is_some_and(|n| !is_space(*n) && !b",[]{}".contains(n))
                        {
                            i += 1;
                        }
                        at_node = b == b'&';
                    }
                    _ => at_node = false,
                }
            } else if at_node {
                match b {
                    b'[' | b'{' => {
                        self.flow = 1;
                        self.depth(line)?;
                    }
                    b'"' | b'\'' => {
                        self.quote = Some(b);
                        at_node = false;
                    }
                    b'|' | b'>' => {
                        // Its text is indented more than the collection holding it.
                        let parent = entry_col.or(self.indents.last().copied()).unwrap_or(0);
                        self.block_scalar = Some(parent + 1);
                        return Ok(());
                    }
                    b'&' | b'*' | b'!' => {
                        if b != b'!' {
                            self.reference(line)?;
                        }
                        while bytes.get(i + 1).is_some_and(|n| !is_space(*n)) {
                            i += 1;
                        }
                        at_node = b != b'*';
                    }
                    b'-' | b'?' if next_is_space => {
                        // `- - x`, `- key: v`: the entry's node is a level of its own.
                        entry_col = Some(i);
                        let mut j = i + 1;
                        while bytes.get(j).is_some_and(|n| is_space(*n)) {
                            j += 1;
                        }
                        let rest = &bytes[j..];
                        if !rest.is_empty() && rest[0] != b'#' {
                            self.indents.push(j);
                            self.depth(line)?;
                        }
                        i = j;
                        continue;
                    }
                    _ => at_node = false,
                }
            } else if b == b':' && next_is_space {
                at_node = true;
                entry_col = None;
            }
            i += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<usize> {
        match check(text) {
            Ok(()) => None,
            Err(e) => {
                assert!(e.message.contains("nested deeper than 64 levels"), "{e:?}");
                Some(e.line)
            }
        }
    }

    #[test]
    fn deep_flow_collections_are_refused_where_they_go_too_deep() {
        let deep = format!("a: b\nc: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(depth_error(&deep), Some(2));
        let ok = format!("c: {}{}\n", "[".repeat(63), "]".repeat(63));
        assert_eq!(depth_error(&ok), None);
        let over = format!("c: {}{}\n", "{a: ".repeat(64), "}".repeat(64));
        assert_eq!(depth_error(&over), Some(1));
        // Across lines.
        let lines = format!("c:\n{}", "  [\n".repeat(80));
        assert_eq!(depth_error(&lines), Some(64));
    }

    #[test]
    fn deep_block_collections_are_refused() {
        let compact = format!("{}x\n", "- ".repeat(100_000));
        assert_eq!(depth_error(&compact), Some(1));
        let mut nested = String::new();
        for i in 0..70 {
            nested.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert_eq!(depth_error(&nested), Some(65));
        // A sequence of mappings opens two levels a line.
        let mut mixed = String::new();
        for i in 0..40 {
            mixed.push_str(&format!("{}- k{i}:\n", "    ".repeat(i)));
        }
        assert_eq!(depth_error(&mixed), Some(33));
    }

    #[test]
    fn brackets_in_scalars_and_comments_are_not_levels() {
        let brackets = "[".repeat(200);
        let text = format!(
            "a: \"{brackets}\"\nb: '{brackets} it''s'\nc: x{brackets}\n# {brackets}\nd: |\n  {brackets}\n  - - - - -\n\n  {brackets}\ne: >-\n    {brackets}\nf: 1 # {brackets}\ng: \"multi\n  line {brackets}\"\nh: [\"{brackets}\", '{brackets}']\n- |\n  {brackets}\n"
        );
        assert_eq!(check(&text), Ok(()));
    }

    #[test]
    fn anchors_and_aliases_are_limited() {
        let mut laughs = String::from("a: &a [lol, lol]\n");
        for i in 0..120 {
            laughs.push_str(&format!("b{i}: &b{i} [*a, *a]\n"));
        }
        let e = check(&laughs).unwrap_err();
        assert!(
            e.message.contains("more than 100 anchors and aliases"),
            "{e:?}"
        );
        assert_eq!(e.line, 35);
        assert_eq!(check("a: &x 1\nb: *x\nc: \"*y &z\"\nd: a*b&c\n"), Ok(()));
    }

    #[test]
    fn large_documents_are_refused() {
        let text = format!("a: \"{}\"\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let e = check(&text).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(
            e.message.contains("over the limit of 1048576 bytes"),
            "{e:?}"
        );
    }

    /// Every manifest shipped with cemesh (examples, deploy files with manifests in
    /// ConfigMaps) is well within the limits.
    #[test]
    fn shipped_yaml_passes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = 0;
        let mut dirs = vec![root.join("examples"), root.join("deploy")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for doc in super::super::split_documents(&text) {
                        assert_eq!(check(doc.text), Ok(()), "{}", p.display());
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen > 0);
    }
}
