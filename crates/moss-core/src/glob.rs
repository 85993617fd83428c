//! Glob patterns as the spec uses them (event type filters, push rule patterns, server ACLs):
//! `*` matches any run of characters, `?` exactly one. Compiled once into literal segments and
//! matched without backtracking: the first and last segments are anchored, each middle one
//! is taken at its leftmost place. That is exact for globs (no segment can do better later),
//! and costs at most subject length × pattern length, so no pattern can make a match slow.
#![warn(clippy::indexing_slicing)]

/// One character of a segment: a literal, or `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Char(char),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pattern split at each `*`; a pattern without `*` has one segment, matched whole.
    segments: Vec<Vec<Tok>>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        let segments = pattern
            .split('*')
            .map(|s| s.chars().map(|c| if c == '?' { Tok::Any } else { Tok::Char(c) }).collect())
            .collect();
        Glob { segments }
    }

    pub fn matches(&self, subject: &str) -> bool {
        let s: Vec<char> = subject.chars().collect();
        self.matches_chars(&s)
    }

    fn matches_chars(&self, s: &[char]) -> bool {
        let Some((first, rest)) = self.segments.split_first() else { return s.is_empty() };
        let Some((last, middle)) = rest.split_last() else {
            return first.len() == s.len() && fits(first, s);
        };
        if first.len() + last.len() > s.len() {
            return false;
        }
        let end = s.len() - last.len();
        let (Some(head), Some(tail)) = (s.get(..first.len()), s.get(end..)) else { return false };
        if !fits(first, head) || !fits(last, tail) {
            return false;
        }
        let mut pos = first.len();
        for seg in middle {
            match s.get(pos..end).and_then(|rest| leftmost(seg, rest)) {
                Some(at) => pos += at + seg.len(),
                None => return false,
            }
        }
        true
    }
}

/// Whether `seg` matches `s` exactly (same length).
fn fits(seg: &[Tok], s: &[char]) -> bool {
    seg.len() == s.len()
        && seg.iter().zip(s).all(|(t, c)| match t {
            Tok::Any => true,
            Tok::Char(p) => p == c,
        })
}

/// Where `seg` first occurs in `s`.
fn leftmost(seg: &[Tok], s: &[char]) -> Option<usize> {
    if seg.is_empty() {
        return Some(0);
    }
    s.windows(seg.len()).position(|w| fits(seg, w))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::Glob;

    fn glob(p: &str, s: &str) -> bool {
        Glob::new(p).matches(s)
    }

    #[test]
    fn spec_globs() {
        assert!(glob("m.*", "m.room.message"));
        assert!(glob("m.room.message", "m.room.message"));
        assert!(!glob("m.room.message", "m.room.messages"));
        assert!(glob("*", ""));
        assert!(glob("**", "abc"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abcd"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
        assert!(glob("?.room.*", "m.room.x"));
        assert!(!glob("?", ""));
        assert!(glob("*é?", "caféx"));
        assert!(glob("*.example.org", "matrix.example.org"));
        assert!(!glob("*.example.org", "example.org"));
        assert!(glob("", ""));
        assert!(!glob("", "a"));
    }

    /// The pattern that made the old backtracking matcher run for minutes answers at once.
    #[test]
    fn no_pattern_is_slow() {
        let subject = "a".repeat(255);
        let pattern = format!("{}b", "*a".repeat(12));
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(!glob(&pattern, &subject));
        }
        let long = format!("{}*b", "a*".repeat(500));
        assert!(!glob(&long, &"a".repeat(10_000)));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }

    /// The spec's glob semantics, written the obvious (exponential) way: for checking only.
    pub(crate) fn reference(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| reference(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && reference(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
        }
    }

    /// Agrees with a plain recursive matcher on every pattern and subject over a small alphabet.
    #[test]
    fn agrees_with_the_definition() {
        let alphabet = ['a', 'b', '*', '?'];
        let words = |max: usize, letters: &[char]| {
            let mut all = vec![String::new()];
            let mut frontier = vec![String::new()];
            for _ in 0..max {
                frontier = frontier.iter().flat_map(|w| letters.iter().map(move |c| format!("{w}{c}"))).collect();
                all.extend(frontier.iter().cloned());
            }
            all
        };
        for p in words(4, &alphabet) {
            for s in words(5, &['a', 'b']) {
                let (pc, sc): (Vec<char>, Vec<char>) = (p.chars().collect(), s.chars().collect());
                assert_eq!(glob(&p, &s), reference(&pc, &sc), "pattern {p:?} subject {s:?}");
            }
        }
    }
}
