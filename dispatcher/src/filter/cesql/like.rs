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
//! pattern language and needs no backtracking.
//!
//! Matching never rescans the text: finding a middle segment is one pass over
//! the text whatever the pattern. A segment's leading and trailing `_`s only
//! shift where it may start and end; what is left (its core) is found with
//! `str::find` when it has no `_`, else with a bit-parallel automaton
//! (Shift-And: one bit per pattern position, advanced a whole machine word at a
//! time), so a text of `n` characters costs `O(n · ⌈core/64⌉)` word
//! operations, never `O(n · core)` comparisons. An adversarial filter such as
//! `'%' || '_'×10000 || 'b%'` on a 64 KiB attribute is one pass over the text.
//! Matching allocates only for a core with inner `_`s longer than 512
//! characters (its automaton state).

/// The automaton state kept on the stack for cores up to this many words.
const STACK_WORDS: usize = 8;

/// One `%`-free piece of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    /// `None` is `_`.
    items: Vec<Option<char>>,
    /// The segment as a plain string when it has no `_` (fast path).
    literal: Option<String>,
    /// Leading and trailing `_`s, in characters.
    lead: usize,
    trail: usize,
    /// What lies between them.
    core: Core,
}

/// The part of a segment between its leading and trailing `_`s.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Core {
    /// The segment is all `_` (or empty).
    Empty,
    /// No `_` inside.
    Literal(String),
    /// `_`s inside: found with Shift-And.
    Automaton(ShiftAnd),
}

/// Shift-And over one core: bit `i` of the state says "the core's first `i + 1`
/// items match the text ending here".
#[derive(Debug, Clone, PartialEq, Eq)]
struct ShiftAnd {
    /// Items (bits).
    len: usize,
    /// Bits of the `_` positions.
    wild: Vec<u64>,
    /// Per character of the core, sorted: where it may stand.
    chars: Vec<(char, CharMask)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum CharMask {
    /// A full mask (`_` positions included), for a character standing in more
    /// places than the core has words, so at most 64 characters have one.
    Dense(Vec<u64>),
    /// The positions, ascending, for the others: applying them costs no more
    /// than a dense mask would, and memory stays linear in the core.
    Sparse(Vec<usize>),
}

impl ShiftAnd {
    fn new(items: &[Option<char>]) -> Self {
        let len = items.len();
        let words = len.div_ceil(64);
        let mut wild = vec![0u64; words];
        let mut positions: std::collections::BTreeMap<char, Vec<usize>> = Default::default();
        for (i, item) in items.iter().enumerate() {
            match item {
                None => wild[i / 64] |= 1 << (i % 64),
                Some(c) => positions.entry(*c).or_default().push(i),
            }
        }
        let chars = positions
            .into_iter()
            .map(|(c, pos)| {
                let mask = if pos.len() > words {
                    let mut m = wild.clone();
                    for p in pos {
                        m[p / 64] |= 1 << (p % 64);
                    }
                    CharMask::Dense(m)
                } else {
                    CharMask::Sparse(pos)
                };
                (c, mask)
            })
            .collect();
        ShiftAnd { len, wild, chars }
    }

    fn words(&self) -> usize {
        self.wild.len()
    }

    /// Byte offset just past the leftmost match in `s`.
    fn find(&self, s: &str, cost: &mut u64) -> Option<usize> {
        let words = self.words();
        let mut stack = [0u64; STACK_WORDS];
        let mut heap = Vec::new();
        let state: &mut [u64] = if words <= STACK_WORDS {
            &mut stack[..words]
        } else {
            heap.resize(words, 0);
            &mut heap
        };
        let top = (self.len - 1) / 64;
        let top_bit = 1u64 << ((self.len - 1) % 64);
        for (i, c) in s.char_indices() {
            *cost += self.step(state, c);
            if state[top] & top_bit != 0 {
                return Some(i + c.len_utf8());
            }
        }
        None
    }

    /// Advances `state` over `c`; returns the work done, in word operations.
    fn step(&self, state: &mut [u64], c: char) -> u64 {
        let mut carry = 1u64;
        for w in state.iter_mut() {
            let x = *w;
            *w = (x << 1) | carry;
            carry = x >> 63;
        }
        let words = state.len() as u64;
        match self.chars.binary_search_by_key(&c, |(k, _)| *k) {
            Ok(i) => match &self.chars[i].1 {
                CharMask::Dense(mask) => {
                    for (w, m) in state.iter_mut().zip(mask) {
                        *w &= m;
                    }
                    2 * words
                }
                CharMask::Sparse(pos) => {
                    let mut pos = pos.iter().peekable();
                    for (i, (w, wild)) in state.iter_mut().zip(&self.wild).enumerate() {
                        let mut m = *wild;
                        while let Some(p) = pos.next_if(|p| **p / 64 == i) {
                            m |= 1 << (p % 64);
                        }
                        *w &= m;
                    }
                    2 * words + pos.len() as u64
                }
            },
            Err(_) => {
                for (w, m) in state.iter_mut().zip(&self.wild) {
                    *w &= m;
                }
                2 * words
            }
        }
    }
}

impl Segment {
    fn new(items: Vec<Option<char>>) -> Self {
        let literal = items.iter().copied().collect::<Option<String>>();
        let lead = items.iter().take_while(|i| i.is_none()).count();
        let trail = if lead == items.len() {
            0
        } else {
            items.iter().rev().take_while(|i| i.is_none()).count()
        };
        let inner = &items[lead..items.len() - trail];
        let core = if inner.is_empty() {
            Core::Empty
        } else if let Some(lit) = inner.iter().copied().collect::<Option<String>>() {
            Core::Literal(lit)
        } else {
            Core::Automaton(ShiftAnd::new(inner))
        };
        Segment {
            items,
            literal,
            lead,
            trail,
            core,
        }
    }

    /// Length in characters.
    fn len(&self) -> usize {
        self.items.len()
    }

    /// If the segment matches a prefix of `s`, the byte length of that prefix.
    fn match_prefix(&self, s: &str, cost: &mut u64) -> Option<usize> {
        *cost += self.items.len() as u64 + 1;
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

    /// Leftmost match in `s`: the byte offset just past it. One pass over `s`:
    /// the core's leftmost occurrence at least `lead` characters in is the
    /// segment's leftmost start, and if `trail` characters do not follow it
    /// they follow no later one either.
    fn find(&self, s: &str, cost: &mut u64) -> Option<usize> {
        let start = skip_chars(s, 0, self.lead, cost)?;
        let rest = &s[start..];
        let core_end = match &self.core {
            Core::Empty => 0,
            Core::Literal(lit) => {
                // `str::find` is linear (two-way search); count the text it may read.
                *cost += rest.len() as u64 + lit.len() as u64;
                rest.find(lit.as_str())? + lit.len()
            }
            Core::Automaton(a) => a.find(rest, cost)?,
        };
        skip_chars(s, start + core_end, self.trail, cost)
    }
}

/// The byte offset `n` characters after `from` in `s`, if there are that many.
fn skip_chars(s: &str, from: usize, n: usize, cost: &mut u64) -> Option<usize> {
    if n == 0 {
        return Some(from);
    }
    *cost += n as u64;
    let mut it = s[from..].char_indices();
    it.nth(n - 1)?;
    Some(from + it.next().map_or(s.len() - from, |(i, _)| i))
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
        self.matches_counting(text, &mut 0)
    }

    /// [`matches`](Self::matches), adding the work done (character steps and
    /// machine-word operations) to `cost`, so tests can bound it without timing.
    fn matches_counting(&self, text: &str, cost: &mut u64) -> bool {
        let (first, rest) = match self.segments.split_first() {
            Some(x) => x,
            None => return text.is_empty(),
        };
        let Some(after_first) = first.match_prefix(text, cost) else {
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
            *cost += last.len() as u64;
            match tail.char_indices().rev().nth(last.len() - 1) {
                Some((i, _)) => i,
                None => return false,
            }
        };
        if last.match_prefix(&tail[last_start..], cost) != Some(tail.len() - last_start) {
            return false;
        }
        let mut window = &tail[..last_start];
        for seg in middle {
            match seg.find(window, cost) {
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

    #[test]
    fn segments_with_inner_and_outer_underscores() {
        assert!(like("xxaybzz", "%a_b%"));
        assert!(!like("xxaybzz", "%a__b%"));
        assert!(like("aaab", "%_a_b"));
        assert!(like("ab", "%__%"));
        assert!(!like("a", "%__%"));
        assert!(like("zzabcz", "%_b_%"));
        assert!(!like("bc", "%_b_%"));
        assert!(like("éaéb", "%a_b%"));
        assert!(!like("a", "%a_%"));
        assert!(!like("ab", "%a_%b%"));
        assert!(like("abb", "%a_%b%"));
        // Longer than one machine word, and than the stack state.
        let long = format!("x{}y", "_".repeat(700));
        assert!(like(
            &format!("--x{}y--", "é".repeat(700)),
            &format!("%{long}%")
        ));
        assert!(!like(
            &format!("--x{}y--", "é".repeat(699)),
            &format!("%{long}%")
        ));
        let mixed = format!("%{}b%", "a_".repeat(100));
        assert!(like(&format!("{}b", "a".repeat(300)), &mixed));
        assert!(!like(&"a".repeat(300), &mixed));
    }

    /// Work done for `pattern` on `text`, in character steps and word operations.
    fn cost(text: &str, pattern: &str) -> (bool, u64) {
        let mut cost = 0;
        let hit = LikePattern::new(pattern.to_string()).matches_counting(text, &mut cost);
        (hit, cost)
    }

    /// The filter of issue 17: `'%' || '_'×10000 || 'b%'` against a 64 KiB
    /// attribute cost 10,000 comparisons per position (635 ms an event). Bounded
    /// by counting the work, not by timing it.
    #[test]
    fn adversarial_patterns_cost_one_pass_over_the_text() {
        let n = 64 * 1024;
        let underscores = "_".repeat(10_000);
        let pattern = format!("%{underscores}b%");
        let m = pattern.len() as u64;
        let text = "a".repeat(n);
        let (hit, c) = cost(&text, &pattern);
        assert!(!hit);
        assert!(c <= 4 * (n as u64 + m), "cost {c}");
        let (hit, c) = cost(&format!("{text}b"), &pattern);
        assert!(hit);
        assert!(c <= 4 * (n as u64 + m), "cost {c}");

        // `_`s inside the segment: one pass, a word at a time (157 words).
        let words = 10_002u64.div_ceil(64);
        let backtrack = n as u64 * 10_000;
        for pattern in [
            format!("%a{underscores}b%"),
            format!("%{}b%", "a_".repeat(5_000)),
            format!("a%c{underscores}b%d"),
        ] {
            let (hit, c) = cost(&text, &pattern);
            assert!(!hit);
            let bound = n as u64 * (3 * words + 2) + 4 * pattern.len() as u64;
            assert!(c <= bound, "cost {c} > {bound}");
            assert!(c * 20 < backtrack, "cost {c}");
        }
        let text = format!("{}b", "a".repeat(n));
        assert!(like(&text, &format!("%a{underscores}b%")));
        assert!(like(&text, &format!("%{}b%", "a_".repeat(5_000))));
    }
}
