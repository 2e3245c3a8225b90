//! The subscriptions the server confirmed, each with the [`SubscribeOptions`] it was made with,
//! in the order they were made: what a reconnect subscribes again (in batches of one set of
//! options each, since a subscribe request carries one), and which topics take deltas.

use tickwire_proto::pattern_matches;

use crate::options::SubscribeOptions;

/// One confirmed subscription (a topic or a pattern), as requested.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Subscription {
    pub pattern: String,
    pub options: SubscribeOptions,
}

/// The confirmed subscriptions, in the order they were made.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    list: Vec<Subscription>,
    /// How many ask for deltas: while none, no delivery looks for a delta subscription.
    deltas: usize,
}

impl Subscriptions {
    pub fn contains(&self, pattern: &str) -> bool {
        self.list.iter().any(|s| s.pattern == pattern)
    }

    /// Records a confirmed subscription. One the client holds takes the new options, as it
    /// does on the server (a subscribe sets a held subscription's terms anew). Returns true
    /// when that turned deltas off for it.
    pub fn insert(&mut self, pattern: String, options: SubscribeOptions) -> bool {
        match self.list.iter_mut().find(|s| s.pattern == pattern) {
            Some(known) => {
                let was = known.options.delta;
                self.deltas = self.deltas + usize::from(options.delta) - usize::from(was);
                known.options = options;
                was && !options.delta
            }
            None => {
                self.deltas += usize::from(options.delta);
                self.list.push(Subscription { pattern, options });
                false
            }
        }
    }

    pub fn remove(&mut self, patterns: &[String]) {
        self.list.retain(|s| !patterns.contains(&s.pattern));
        self.deltas = self.list.iter().filter(|s| s.options.delta).count();
    }

    pub fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.list.iter()
    }

    pub fn patterns(&self) -> impl Iterator<Item = &String> {
        self.list.iter().map(|s| &s.pattern)
    }

    pub fn covers(&self, topic: &str) -> bool {
        self.patterns().any(|p| pattern_matches(p, topic))
    }

    /// The first subscription asking for deltas that matches `topic`.
    pub fn delta_for(&self, topic: &str) -> Option<&Subscription> {
        if self.deltas == 0 {
            return None;
        }
        (self.list.iter()).find(|s| s.options.delta && pattern_matches(&s.pattern, topic))
    }

    /// The subscriptions in the order a reconnect sends them: grouped by options (in the order
    /// each set of options first appears), in the order they were made within a group.
    pub fn by_options(&self) -> Vec<&Subscription> {
        let mut groups: Vec<SubscribeOptions> = Vec::new();
        for s in &self.list {
            if !groups.contains(&s.options) {
                groups.push(s.options);
            }
        }
        (groups.iter())
            .flat_map(|g| self.list.iter().filter(move |s| s.options == *g))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_kept_per_subscription_and_grouped_for_a_reconnect() {
        let delta = SubscribeOptions::default().delta(true);
        let slow = SubscribeOptions::default().max_rate(2.0);
        let mut subs = Subscriptions::default();
        for (pattern, options) in [
            ("a.*", delta),
            ("b", SubscribeOptions::default()),
            ("c.>", delta),
            ("d", slow),
            ("e", SubscribeOptions::default()),
        ] {
            assert!(!subs.insert(pattern.into(), options));
        }
        let order: Vec<&str> = (subs.by_options().iter()).map(|s| s.pattern.as_str()).collect();
        assert_eq!(order, ["a.*", "c.>", "b", "e", "d"]);
        assert_eq!(subs.delta_for("c.x.y").map(|s| s.pattern.as_str()), Some("c.>"));
        assert!(subs.delta_for("b").is_none());
        assert!(subs.covers("b") && !subs.covers("z"));

        // Subscribing again replaces the options; unsubscribing forgets them.
        assert!(subs.insert("a.*".into(), slow), "deltas turned off");
        assert!(subs.delta_for("a.x").is_none());
        let order: Vec<&str> = (subs.by_options().iter()).map(|s| s.pattern.as_str()).collect();
        assert_eq!(order, ["a.*", "d", "b", "e", "c.>"]);
        subs.remove(&["c.>".to_string()]);
        assert!(subs.delta_for("c.x").is_none());
        assert_eq!(subs.deltas, 0);
        assert!(!subs.insert("b".into(), delta));
        assert_eq!(subs.delta_for("b").map(|s| &s.pattern[..]), Some("b"));
        assert!(subs.contains("e") && !subs.contains("c.>"));
    }
}
