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
//! `prices.>` visit only what lies under `prices`; a leading `*` visits every first token. Walks
//! go in name order and resume after a name, so a wide pattern's matches are taken in slices,
//! each under its own short hold of the names, and never collected whole.

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
        in_order(&self.root, after.map(Topic::as_str), &mut out, want);
        out
    }

    /// Up to `limit` topics `pattern` matches, in name order after `after`: a large pattern's
    /// matches in slices, so that the caller holds the names for one slice at a time and a
    /// walk resumes where the last one ended.
    pub fn matching_after(&self, pattern: &Pattern, after: Option<&Topic>, limit: usize) -> Vec<Topic> {
        let tokens: Vec<&str> = pattern.as_str().split('.').collect();
        let mut out = Vec::with_capacity(limit.min(1024));
        walk_in_order(&self.root, &tokens, after.map(Topic::as_str), &mut out, limit);
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

/// Appends to `out`, in name order, the topics below `node` whose names from here on (the
/// tokens below `node`'s prefix) come after `after` (all of them when `None`), until `out`
/// holds `want`.
fn in_order(node: &Node, after: Option<&str>, out: &mut Vec<Topic>, want: usize) {
    // Every key up to the bound is left out; `after` may lie inside the child at the bound.
    let mut key = String::new();
    let (leaves, mut children, resume) = match after.map(|a| (a, a.split_once('.'))) {
        None => (
            node.leaves.range::<str, _>(..),
            node.children.range::<str, _>(..),
            None,
        ),
        Some((last, None)) => {
            let from = (Bound::Excluded(last), Bound::Unbounded);
            (
                node.leaves.range::<str, _>(from),
                node.children.range::<str, _>(from),
                None,
            )
        }
        Some((_, Some((first, rest)))) => {
            child_key(&mut key, first);
            let from = (Bound::Excluded(key.as_str()), Bound::Unbounded);
            let resume = node.children.get(key.as_str()).map(|child| (child, rest));
            (
                node.leaves.range::<str, _>(from),
                node.children.range::<str, _>(from),
                resume,
            )
        }
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

/// Walks `node` (a topic prefix of some length n) with the pattern's tokens from position n on,
/// appending the matches that come after `after` (as in [`in_order`]) in name order until `out`
/// holds `want`. Only `>` takes both leaves and children; every other pattern token takes one
/// kind, whose keys are then in name order by themselves.
fn walk_in_order(node: &Node, pattern: &[&str], after: Option<&str>, out: &mut Vec<Topic>, want: usize) {
    if out.len() >= want {
        return;
    }
    // Where `after` stands among this node's children: the child it lies in, and what follows.
    let split = after.and_then(|a| a.split_once('.'));
    match pattern {
        [">"] => in_order(node, after, out, want),
        ["*"] => {
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            for leaf in node.leaves.range::<str, _>((from, Bound::Unbounded)) {
                if out.len() >= want {
                    return;
                }
                out.push(leaf.0.clone());
            }
        }
        [last] => {
            let leaf = node.leaves.get(*last);
            if let Some(leaf) = leaf.filter(|leaf| after.is_none_or(|a| leaf.token() > a)) {
                out.push(leaf.0.clone());
            }
        }
        [token, rest @ ..] => {
            // The first child key after `after`: a name ending here leaves out the keys up to
            // it; a longer one starts at the child it lies in, and resumes inside it.
            let mut key = String::new();
            let from = match (after, split) {
                (None, _) => Bound::Unbounded,
                (Some(last), None) => Bound::Excluded(last),
                (Some(_), Some((first, _))) => {
                    child_key(&mut key, first);
                    Bound::Included(key.as_str())
                }
            };
            let inside = |name: &str| {
                let within = split.filter(|(first, _)| name.strip_suffix('.') == Some(*first));
                within.map(|(_, rest)| rest)
            };
            if *token == "*" {
                for (name, child) in node.children.range::<str, _>((from, Bound::Unbounded)) {
                    if out.len() >= want {
                        return;
                    }
                    walk_in_order(child, rest, inside(name), out, want);
                }
                return;
            }
            let mut name = String::new();
            child_key(&mut name, token);
            let after_bound = match from {
                Bound::Unbounded => true,
                Bound::Excluded(bound) => name.as_str() > bound,
                Bound::Included(bound) => name.as_str() >= bound,
            };
            if let Some(child) = node.children.get(name.as_str()).filter(|_| after_bound) {
                walk_in_order(child, rest, inside(&name), out, want);
            }
        }
        [] => {}
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
        let mut got: Vec<String> = trie
            .matching_after(&p(pattern), None, usize::MAX)
            .iter()
            .map(|t| t.to_string())
            .collect();
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

    /// Every match of `pattern`, in slices of `limit`, each after the last name of the one before.
    fn matched_in_slices(trie: &TopicNames, pattern: &Pattern, limit: usize) -> Vec<String> {
        let mut all = Vec::new();
        let mut after: Option<Topic> = None;
        loop {
            let slice = trie.matching_after(pattern, after.as_ref(), limit);
            assert!(slice.len() <= limit);
            after = slice.last().cloned();
            all.extend(slice.iter().map(|t| t.to_string()));
            if slice.len() < limit {
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
        let tokens = ["a", "b", "c", "BTC-USD", "x_1", "a-b", "a:b", "BTC"];
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
            for limit in [1, 2, 7] {
                assert_eq!(
                    matched_in_slices(&trie, &pattern, limit),
                    want,
                    "{pattern} by {limit}"
                );
            }
            // Resuming after any name, a topic or not (one dropped since the last slice).
            let len = rng.random_range(1..5);
            let name: Vec<&str> = (0..len).map(|_| token(&mut rng, false)).collect();
            let after = t(&name.join("."));
            let got: Vec<String> = (trie.matching_after(&pattern, Some(&after), usize::MAX).iter())
                .map(|t| t.to_string())
                .collect();
            let rest: Vec<String> = (want.iter())
                .filter(|w| w.as_str() > after.as_str())
                .cloned()
                .collect();
            assert_eq!(got, rest, "{pattern} after {after}");
            let mut want: Vec<String> = (all.iter())
                .filter(|topic| pattern.matches(topic))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(sorted(&trie, pattern.as_str()), want, "{pattern}");
        }
    }
}
