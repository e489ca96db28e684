//! A growable bitset over event sequence numbers: how the generator remembers which
//! events the ingress accepted and the sink which ones a trigger already delivered, so
//! loss and duplicates are counted exactly (one bit per event, not a hash set entry).

#[derive(Debug, Default, Clone)]
pub struct Bitset {
    words: Vec<u64>,
    len: u64,
}

impl Bitset {
    /// Sets bit `i`; true if it was not set before.
    pub fn insert(&mut self, i: u64) -> bool {
        let w = usize::try_from(i / 64).unwrap_or(usize::MAX);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let mask = 1u64 << (i % 64);
        let new = self.words[w] & mask == 0;
        self.words[w] |= mask;
        self.len += u64::from(new);
        new
    }

    pub fn contains(&self, i: u64) -> bool {
        let w = usize::try_from(i / 64).unwrap_or(usize::MAX);
        self.words
            .get(w)
            .is_some_and(|word| word & (1u64 << (i % 64)) != 0)
    }

    /// Bits set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Every set bit, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(w as u64 * 64 + u64::from(b))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_iter() {
        let mut b = Bitset::default();
        assert!(b.insert(3));
        assert!(!b.insert(3));
        assert!(b.insert(200));
        assert!(b.contains(3) && b.contains(200) && !b.contains(4) && !b.contains(10_000));
        assert_eq!(b.len(), 2);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![3, 200]);
    }
}
