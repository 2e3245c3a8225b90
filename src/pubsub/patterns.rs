//! The index of pattern subscriptions: a token trie, so that finding the patterns that match a
//! topic costs a walk over the topic's tokens, not a scan of every pattern.
//!
//! The hub consults it when a topic comes into existence; after that, pattern subscribers are
//! recorded on the topic itself and publishing never touches this index.

use std::collections::HashMap;

use crate::topic::{Pattern, Topic};

/// Subscriber ids to values (the subscriber's outbox), for every pattern.
pub struct PatternIndex<V> {
    root: Node<V>,
}

struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// `*` at this position.
    star: Option<Box<Node<V>>>,
    /// Patterns ending at this node.
    here: Option<Entry<V>>,
    /// Patterns ending with `>` right after this node.
    tail: Option<Entry<V>>,
}

struct Entry<V> {
    pattern: Pattern,
    subscribers: HashMap<u64, V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            star: None,
            here: None,
            tail: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.star.is_none() && self.here.is_none() && self.tail.is_none()
    }
}

impl<V> Default for PatternIndex<V> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
        }
    }
}

impl<V: Clone> PatternIndex<V> {
    /// Adds `id` as a subscriber of `pattern`. Returns false if it already was one.
    pub fn insert(&mut self, pattern: &Pattern, id: u64, value: V) -> bool {
        let mut node = &mut self.root;
        let mut tokens = pattern.as_str().split('.').peekable();
        let entry = loop {
            let token = tokens.next().expect("patterns have at least one token");
            let last = tokens.peek().is_none();
            if token == ">" {
                break &mut node.tail;
            }
            node = if token == "*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.children.entry(token.into()).or_default()
            };
            if last {
                break &mut node.here;
            }
        };
        let entry = entry.get_or_insert_with(|| Entry {
            pattern: pattern.clone(),
            subscribers: HashMap::new(),
        });
        entry.subscribers.insert(id, value).is_none()
    }

    /// Removes `id` from `pattern`, pruning nodes left empty. Returns false if it was not there.
    pub fn remove(&mut self, pattern: &Pattern, id: u64) -> bool {
        let tokens: Vec<&str> = pattern.as_str().split('.').collect();
        remove_in(&mut self.root, &tokens, id)
    }

    /// Calls `f` for every (pattern, subscriber id, value) whose pattern matches `topic`.
    pub fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(&Pattern, u64, &V)) {
        let tokens: Vec<&str> = topic.as_str().split('.').collect();
        walk(&self.root, &tokens, &mut f);
    }
}

fn walk<V>(node: &Node<V>, tokens: &[&str], f: &mut impl FnMut(&Pattern, u64, &V)) {
    let Some((first, rest)) = tokens.split_first() else {
        if let Some(e) = &node.here {
            e.subscribers.iter().for_each(|(id, v)| f(&e.pattern, *id, v));
        }
        return;
    };
    if let Some(e) = &node.tail {
        e.subscribers.iter().for_each(|(id, v)| f(&e.pattern, *id, v));
    }
    if let Some(child) = node.children.get(*first) {
        walk(child, rest, f);
    }
    if let Some(star) = &node.star {
        walk(star, rest, f);
    }
}

fn remove_in<V>(node: &mut Node<V>, tokens: &[&str], id: u64) -> bool {
    fn take<V>(slot: &mut Option<Entry<V>>, id: u64) -> bool {
        let Some(entry) = slot else { return false };
        let removed = entry.subscribers.remove(&id).is_some();
        if entry.subscribers.is_empty() {
            *slot = None;
        }
        removed
    }
    match tokens {
        [">"] => take(&mut node.tail, id),
        [token, rest @ ..] => {
            let (removed, empty) = if *token == "*" {
                let Some(star) = node.star.as_deref_mut() else {
                    return false;
                };
                let removed = if rest.is_empty() {
                    take(&mut star.here, id)
                } else {
                    remove_in(star, rest, id)
                };
                (removed, star.is_empty())
            } else {
                let Some(child) = node.children.get_mut(*token) else {
                    return false;
                };
                let removed = if rest.is_empty() {
                    take(&mut child.here, id)
                } else {
                    remove_in(child, rest, id)
                };
                (removed, child.is_empty())
            };
            if empty {
                if *token == "*" {
                    node.star = None;
                } else {
                    node.children.remove(*token);
                }
            }
            removed
        }
        [] => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(idx: &PatternIndex<()>, topic: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        idx.for_each_match(&Topic::parse(topic).unwrap(), |p, id, _| {
            out.push((p.to_string(), id))
        });
        out.sort();
        out
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn finds_exactly_the_matching_patterns() {
        let mut idx = PatternIndex::default();
        for (i, pat) in ["prices.*", "prices.>", ">", "*.BTC", "prices.BTC", "news.*"]
            .iter()
            .enumerate()
        {
            assert!(idx.insert(&p(pat), i as u64, ()));
        }
        assert!(!idx.insert(&p("prices.*"), 0, ()), "second insert is a no-op");
        let got = matches(&idx, "prices.BTC");
        let want: Vec<(String, u64)> = [
            (">", 2),
            ("*.BTC", 3),
            ("prices.*", 0),
            ("prices.>", 1),
            ("prices.BTC", 4),
        ]
        .iter()
        .map(|(s, i)| (s.to_string(), *i))
        .collect();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
        assert_eq!(
            matches(&idx, "prices.BTC.x"),
            vec![(">".into(), 2), ("prices.>".into(), 1)]
        );
        assert_eq!(matches(&idx, "prices"), vec![(">".into(), 2)]);
    }

    #[test]
    fn remove_prunes() {
        let mut idx = PatternIndex::default();
        idx.insert(&p("a.*.c"), 1, ());
        idx.insert(&p("a.>"), 1, ());
        idx.insert(&p("a.*.c"), 2, ());
        assert!(idx.remove(&p("a.*.c"), 1));
        assert!(!idx.remove(&p("a.*.c"), 1));
        assert_eq!(
            matches(&idx, "a.b.c"),
            vec![("a.*.c".into(), 2), ("a.>".into(), 1)]
        );
        assert!(idx.remove(&p("a.*.c"), 2));
        assert!(idx.remove(&p("a.>"), 1));
        assert!(!idx.remove(&p("x.y"), 1));
        assert!(idx.root.is_empty());
    }
}
