//! The names of the hub's topics, kept two ways: in order, so that a page of the listing costs
//! O(log n + page) instead of a sort of every topic; and by token, in a trie, so that the
//! topics a pattern matches are found by walking the pattern's tokens down the trie instead of
//! testing every topic. A pattern subscription (and its unsubscribe) then costs what it
//! matches, not what the node holds.
//!
//! Memory decides the trie's shape (`limits.max_topics` may be millions). A topic costs one
//! slot in its parent's leaf set, holding the `Topic` handle the hub's map already shares (no
//! copy of the name). Only the tokens *before* a topic's last make interior nodes, and topics
//! with a common prefix share them: `prices.BTC-USD` and `prices.ETH-USD` are two leaves of
//! one `prices` node. Measured (release, 1M topics): 24 to 36 B per topic for the trie.
//!
//! A walk costs the matches plus the nodes the pattern's wildcards open: `prices.*` and
//! `prices.>` visit only what lies under `prices`; a leading `*` visits every first token.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;

use crate::topic::{Pattern, Topic};

/// The topic names, in order and by token. Both hold the same set.
#[derive(Default)]
pub struct TopicNames {
    sorted: BTreeSet<Topic>,
    root: Node,
}

#[derive(Default)]
struct Node {
    /// The topics with exactly one token more than this node's prefix, by that last token.
    leaves: HashSet<Leaf>,
    /// The longer topics, by their next token.
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.children.is_empty()
    }
}

/// A topic in its parent's leaf set. Hashed and compared by its last token only, so the set is
/// looked up by that token (`Borrow<str>`) without storing it a second time.
struct Leaf(Topic);

impl Leaf {
    fn token(&self) -> &str {
        last_token(self.0.as_str())
    }
}

fn last_token(topic: &str) -> &str {
    topic.rsplit_once('.').map_or(topic, |(_, last)| last)
}

impl PartialEq for Leaf {
    fn eq(&self, other: &Leaf) -> bool {
        self.token() == other.token()
    }
}

impl Eq for Leaf {}

// Must hash exactly as `str` does, for `Borrow<str>` lookups.
impl Hash for Leaf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.token().hash(state)
    }
}

impl Borrow<str> for Leaf {
    fn borrow(&self) -> &str {
        self.token()
    }
}

/// A set that has shrunk to a quarter of its capacity gives the rest back, so a burst of topics
/// that is gone again does not keep its memory.
macro_rules! shrink {
    ($set:expr) => {
        if $set.capacity() > 16 && $set.len() < $set.capacity() / 4 {
            $set.shrink_to_fit();
        }
    };
}

impl TopicNames {
    /// Adds `topic`; false if it was already there.
    pub fn insert(&mut self, topic: &Topic) -> bool {
        if !self.sorted.insert(topic.clone()) {
            return false;
        }
        let mut node = &mut self.root;
        if let Some((parents, _)) = topic.as_str().rsplit_once('.') {
            for token in parents.split('.') {
                if !node.children.contains_key(token) {
                    node.children.insert(token.into(), Node::default());
                }
                node = node.children.get_mut(token).expect("inserted above");
            }
        }
        node.leaves.insert(Leaf(topic.clone()));
        true
    }

    /// Removes `topic`, pruning the nodes it leaves empty; false if it was not there.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        if !self.sorted.remove(topic) {
            return false;
        }
        let tokens: Vec<&str> = topic.as_str().split('.').collect();
        remove_in(&mut self.root, &tokens)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Up to `limit` names in order after `after`, and one more if there is one (so the caller
    /// knows whether a next page exists).
    pub fn page(&self, after: Option<&Topic>, limit: usize) -> Vec<Topic> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self.sorted.range::<Topic, _>((from, Bound::Unbounded));
        range.take(limit.saturating_add(1)).cloned().collect()
    }

    /// Calls `f` with every topic `pattern` matches, in no particular order.
    pub fn for_each_match(&self, pattern: &Pattern, mut f: impl FnMut(&Topic)) {
        let tokens: Vec<&str> = pattern.as_str().split('.').collect();
        walk(&self.root, &tokens, &mut f);
    }

    /// The topics `pattern` matches.
    pub fn matching(&self, pattern: &Pattern) -> Vec<Topic> {
        let mut out = Vec::new();
        self.for_each_match(pattern, |topic| out.push(topic.clone()));
        out
    }
}

fn remove_in(node: &mut Node, tokens: &[&str]) -> bool {
    match tokens {
        [last] => {
            let removed = node.leaves.remove(*last);
            shrink!(node.leaves);
            removed
        }
        [first, rest @ ..] => {
            let Some(child) = node.children.get_mut(*first) else {
                return false;
            };
            let removed = remove_in(child, rest);
            if child.is_empty() {
                node.children.remove(*first);
                shrink!(node.children);
            }
            removed
        }
        [] => false,
    }
}

/// Walks `node` (a topic prefix of some length n) with the pattern's tokens from position n on.
fn walk(node: &Node, pattern: &[&str], f: &mut impl FnMut(&Topic)) {
    match pattern {
        [">"] => every(node, f),
        ["*"] => node.leaves.iter().for_each(|leaf| f(&leaf.0)),
        [last] => {
            if let Some(leaf) = node.leaves.get(*last) {
                f(&leaf.0);
            }
        }
        ["*", rest @ ..] => node.children.values().for_each(|child| walk(child, rest, f)),
        [token, rest @ ..] => {
            if let Some(child) = node.children.get(*token) {
                walk(child, rest, f);
            }
        }
        [] => {}
    }
}

/// Every topic below `node`: `>` takes one or more tokens.
fn every(node: &Node, f: &mut impl FnMut(&Topic)) {
    node.leaves.iter().for_each(|leaf| f(&leaf.0));
    node.children.values().for_each(|child| every(child, f));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn t(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn sorted(trie: &TopicNames, pattern: &str) -> Vec<String> {
        let mut got: Vec<String> = trie.matching(&p(pattern)).iter().map(|t| t.to_string()).collect();
        got.sort();
        got
    }

    #[test]
    fn finds_exactly_the_matching_topics() {
        let mut trie = TopicNames::default();
        for topic in [
            "prices",
            "prices.BTC",
            "prices.ETH",
            "prices.BTC.bid",
            "news.BTC",
            "a.b.c.d",
        ] {
            assert!(trie.insert(&t(topic)));
        }
        assert!(!trie.insert(&t("prices.BTC")), "a second insert is a no-op");
        assert_eq!(trie.len(), 6);
        assert_eq!(sorted(&trie, "prices.*"), ["prices.BTC", "prices.ETH"]);
        assert_eq!(
            sorted(&trie, "prices.>"),
            ["prices.BTC", "prices.BTC.bid", "prices.ETH"]
        );
        assert_eq!(sorted(&trie, "*.BTC"), ["news.BTC", "prices.BTC"]);
        assert_eq!(sorted(&trie, "*"), ["prices"]);
        assert_eq!(sorted(&trie, "prices"), ["prices"]);
        assert_eq!(sorted(&trie, "*.*.bid"), ["prices.BTC.bid"]);
        assert_eq!(sorted(&trie, "a.>"), ["a.b.c.d"]);
        assert_eq!(sorted(&trie, "a.*.c"), Vec::<String>::new());
        assert_eq!(sorted(&trie, ">").len(), 6);
    }

    #[test]
    fn remove_prunes_to_nothing() {
        let mut trie = TopicNames::default();
        let topics = ["a.b.c", "a.b", "a", "a.x.y.z"];
        for topic in topics {
            trie.insert(&t(topic));
        }
        assert!(!trie.remove(&t("a.b.q")));
        assert!(!trie.remove(&t("a.x")), "an interior node is not a topic");
        for topic in topics {
            assert!(trie.remove(&t(topic)), "{topic}");
            assert!(!trie.remove(&t(topic)));
        }
        assert_eq!(trie.len(), 0);
        assert!(trie.root.is_empty());
    }

    /// Every operation agrees with testing `Pattern::matches` against every topic.
    #[test]
    fn agrees_with_brute_force() {
        let mut rng = StdRng::seed_from_u64(7);
        let tokens = ["a", "b", "c", "BTC-USD", "x_1"];
        let token = |rng: &mut StdRng, wild: bool| {
            let n = if wild { tokens.len() + 2 } else { tokens.len() };
            match rng.random_range(0..n) {
                i if i < tokens.len() => tokens[i],
                i if i == tokens.len() => "*",
                _ => ">",
            }
        };
        let mut trie = TopicNames::default();
        let mut all: HashSet<Topic> = HashSet::new();
        for round in 0..3000 {
            let len = rng.random_range(1..5);
            let name: Vec<&str> = (0..len).map(|_| token(&mut rng, false)).collect();
            let topic = t(&name.join("."));
            if rng.random_bool(0.3) {
                assert_eq!(trie.remove(&topic), all.remove(&topic));
            } else {
                assert_eq!(trie.insert(&topic), all.insert(topic));
            }
            assert_eq!(trie.len(), all.len());
            if round % 10 != 0 {
                continue;
            }
            let len = rng.random_range(1..5);
            let mut pat: Vec<&str> = (0..len).map(|_| token(&mut rng, true)).collect();
            pat.iter_mut()
                .rev()
                .skip(1)
                .filter(|t| **t == ">")
                .for_each(|t| *t = "*");
            let pattern = p(&pat.join("."));
            let mut want: Vec<String> = (all.iter())
                .filter(|topic| pattern.matches(topic))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(sorted(&trie, pattern.as_str()), want, "{pattern}");
        }
    }
}
