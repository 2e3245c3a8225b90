//! The names of the hub's topics, in one token trie that serves both of their uses: the topics a
//! pattern matches are found by walking the pattern's tokens down the trie instead of testing
//! every topic, so a pattern subscription (and its unsubscribe) costs what it matches, not what
//! the node holds; and the trie is ordered, so a page of the listing, in name order, costs
//! O(depth × log n + page) instead of a sort of every topic.
//!
//! Memory decides the trie's shape (`limits.max_topics` may be millions). A topic costs one
//! slot in its parent's leaf set, holding the `Topic` handle the hub's map already shares (no
//! copy of the name). Only the tokens *before* a topic's last make interior nodes, and topics
//! with a common prefix share them: `prices.BTC-USD` and `prices.ETH-USD` are two leaves of
//! one `prices` node. One index, not two: a sorted set of the names beside a hashed trie cost
//! about 30 bytes more per topic (issue 16's ≤ 300 B per topic).
//!
//! Name order from token order: a node's leaves are keyed by their last token and its children
//! by their token *followed by the separator* (`prices.`), so that comparing keys compares the
//! names they lead to. `a-b` (a leaf) sorts before `a.b` (below the child `a.`) exactly as the
//! strings do, because `-` sorts before `.`; a leaf `a` before the child `a.` because a string
//! sorts before its extensions.
//!
//! A walk costs the matches plus the nodes the pattern's wildcards open: `prices.*` and
//! `prices.>` visit only what lies under `prices`; a leading `*` visits every first token.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::topic::{Pattern, Topic};

/// The topic names, by token and in order.
#[derive(Default)]
pub struct TopicNames {
    root: Node,
    len: usize,
}

#[derive(Default)]
struct Node {
    /// The topics with exactly one token more than this node's prefix, by that last token.
    leaves: BTreeSet<Leaf>,
    /// The longer topics, by their next token followed by `.` (see the header: name order).
    children: BTreeMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.leaves.is_empty() && self.children.is_empty()
    }
}

/// A topic in its parent's leaf set. Ordered by its last token only, so the set is looked up by
/// that token (`Borrow<str>`) without storing it a second time.
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

// Must order exactly as `str` does, for `Borrow<str>` lookups.
impl Ord for Leaf {
    fn cmp(&self, other: &Leaf) -> Ordering {
        self.token().cmp(other.token())
    }
}

impl PartialOrd for Leaf {
    fn partial_cmp(&self, other: &Leaf) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Borrow<str> for Leaf {
    fn borrow(&self) -> &str {
        self.token()
    }
}

/// A child's key: its token and the separator.
fn child_key(key: &mut String, token: &str) {
    key.clear();
    key.push_str(token);
    key.push('.');
}

impl TopicNames {
    /// Adds `topic`; false if it was already there.
    pub fn insert(&mut self, topic: &Topic) -> bool {
        let mut node = &mut self.root;
        let mut key = String::new();
        if let Some((parents, _)) = topic.as_str().rsplit_once('.') {
            for token in parents.split('.') {
                child_key(&mut key, token);
                if !node.children.contains_key(key.as_str()) {
                    node.children.insert(key.as_str().into(), Node::default());
                }
                node = node.children.get_mut(key.as_str()).expect("inserted above");
            }
        }
        let added = node.leaves.insert(Leaf(topic.clone()));
        self.len += usize::from(added);
        added
    }

    /// Removes `topic`, pruning the nodes it leaves empty; false if it was not there.
    pub fn remove(&mut self, topic: &Topic) -> bool {
        let tokens: Vec<&str> = topic.as_str().split('.').collect();
        let removed = remove_in(&mut self.root, &tokens, &mut String::new());
        self.len -= usize::from(removed);
        removed
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Up to `limit` names in order after `after`, and one more if there is one (so the caller
    /// knows whether a next page exists).
    pub fn page(&self, after: Option<&Topic>, limit: usize) -> Vec<Topic> {
        let want = limit.saturating_add(1);
        let mut out = Vec::with_capacity(want.min(1024));
        let after: Option<Vec<&str>> = after.map(|t| t.as_str().split('.').collect());
        in_order(&self.root, after.as_deref(), &mut out, want);
        out
    }

    /// Calls `f` with every topic `pattern` matches, in no particular order.
    pub fn for_each_match(&self, pattern: &Pattern, mut f: impl FnMut(&Topic)) {
        let tokens: Vec<&str> = pattern.as_str().split('.').collect();
        walk(&self.root, &tokens, &mut f, &mut String::new());
    }

    /// The topics `pattern` matches.
    pub fn matching(&self, pattern: &Pattern) -> Vec<Topic> {
        let mut out = Vec::new();
        self.for_each_match(pattern, |topic| out.push(topic.clone()));
        out
    }
}

fn remove_in(node: &mut Node, tokens: &[&str], key: &mut String) -> bool {
    match tokens {
        [last] => node.leaves.remove(*last),
        [first, rest @ ..] => {
            child_key(key, first);
            let Some(child) = node.children.get_mut(key.as_str()) else {
                return false;
            };
            let removed = remove_in(child, rest, key);
            if child.is_empty() {
                child_key(key, first);
                node.children.remove(key.as_str());
            }
            removed
        }
        [] => false,
    }
}

/// Walks `node` (a topic prefix of some length n) with the pattern's tokens from position n on.
fn walk(node: &Node, pattern: &[&str], f: &mut impl FnMut(&Topic), key: &mut String) {
    match pattern {
        [">"] => every(node, f),
        ["*"] => node.leaves.iter().for_each(|leaf| f(&leaf.0)),
        [last] => {
            if let Some(leaf) = node.leaves.get(*last) {
                f(&leaf.0);
            }
        }
        ["*", rest @ ..] => node.children.values().for_each(|child| walk(child, rest, f, key)),
        [token, rest @ ..] => {
            child_key(key, token);
            if let Some(child) = node.children.get(key.as_str()) {
                walk(child, rest, f, key);
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

/// Appends to `out`, in name order, the topics below `node` whose tokens from here on come
/// after `after`'s (all of them when `None`), until `out` holds `want`.
fn in_order(node: &Node, after: Option<&[&str]>, out: &mut Vec<Topic>, want: usize) {
    // The first key to leave out, and the child to resume inside, if `after` lies below one.
    let mut key = String::new();
    let (leaves, mut children, resume) = match after {
        None => (
            node.leaves.range::<str, _>(..),
            node.children.range::<str, _>(..),
            None,
        ),
        Some([last]) => {
            let from = (Bound::Excluded(*last), Bound::Unbounded);
            (
                node.leaves.range::<str, _>(from),
                node.children.range::<str, _>(from),
                None,
            )
        }
        Some([first, rest @ ..]) => {
            child_key(&mut key, first);
            let from = (Bound::Excluded(key.as_str()), Bound::Unbounded);
            let resume = node.children.get(key.as_str()).map(|child| (child, rest));
            (
                node.leaves.range::<str, _>(from),
                node.children.range::<str, _>(from),
                resume,
            )
        }
        Some([]) => return,
    };
    if let Some((child, rest)) = resume {
        in_order(child, Some(rest), out, want);
    }
    let mut leaves = leaves.peekable();
    let mut next_child = children.next();
    while out.len() < want {
        let take_leaf = match (leaves.peek(), &next_child) {
            (None, None) => return,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(leaf), Some((child, _))) => leaf.token() < &***child,
        };
        if take_leaf {
            out.push(leaves.next().expect("peeked").0.clone());
        } else {
            let (_, child) = next_child.expect("matched above");
            in_order(child, None, out, want);
            next_child = children.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;

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

    /// Every name, in pages of `limit`, each page after the last name of the one before.
    fn listed(trie: &TopicNames, limit: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut after: Option<Topic> = None;
        loop {
            let mut page = trie.page(after.as_ref(), limit);
            let more = page.len() > limit;
            page.truncate(limit);
            after = page.last().cloned();
            all.extend(page.iter().map(|t| t.to_string()));
            if !more {
                return all;
            }
        }
    }

    #[test]
    fn lists_in_name_order() {
        let mut trie = TopicNames::default();
        // `-` and `:` sort on either side of the separator; a name before its extensions.
        let names = [
            "a", "a-b", "a.b", "a.b.c", "a.b-c", "a:b", "a.-", "a-", "a0", "b", "a.b.c.d", "A",
        ];
        for name in names {
            trie.insert(&t(name));
        }
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        for limit in [1, 2, 5, 100] {
            assert_eq!(listed(&trie, limit), want, "pages of {limit}");
        }
        let after = |name: &str| trie.page(Some(&t(name)), 100);
        let from = |name: &str| {
            want.iter()
                .filter(|w| w.as_str() > name)
                .cloned()
                .collect::<Vec<_>>()
        };
        for name in ["a.a", "a.c", "a.b.b", "a-a", "0", "z", "a.b.c.d.e"] {
            let got: Vec<String> = after(name).iter().map(|t| t.to_string()).collect();
            assert_eq!(got, from(name), "after {name}, which is not a topic");
        }
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
            let mut names: Vec<String> = all.iter().map(|t| t.to_string()).collect();
            names.sort();
            assert_eq!(
                listed(&trie, 3),
                names,
                "the listing pages through every name in order"
            );
            let mut want: Vec<String> = (all.iter())
                .filter(|topic| pattern.matches(topic))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(sorted(&trie, pattern.as_str()), want, "{pattern}");
        }
    }
}
