//! The payload shapes of the bandwidth scenario: a value that changes a little with every
//! publication, generated deterministically from a seed, serialized as compact JSON with the
//! send stamp (`"ts"`, µs since the epoch) the latency accounting reads back.
//!
//! - `tick`: the feed's price tick, ~90 B, `{"symbol":"BTC-USD","price":…,"bid":…,"ask":…,"ts":…}`;
//!   the price and one or both of bid and ask change (2–3 numbers).
//! - `book`: a 50-level order book, ~3.2 KB, `{"ts":…,"bids":[[price,size],…50],"asks":[…50]}`,
//!   levels as strings with 8 decimals (the way exchanges publish depth); 2–4 sizes change.
//! - `doc`: a ~5 KB document of nested objects and strings (some multi-byte UTF-8, an emoji
//!   among them); exactly one field changes.
//!
//! How small a change is decides what a delta can save, so the tests hold each shape to it.
//! The stamp comes first in `book` and `doc` so the receiver finds it at once; `tick` keeps the
//! feed's field order.

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Tick,
    Book,
    Doc,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Tick => "tick",
            Shape::Book => "book",
            Shape::Doc => "doc",
        }
    }
}

/// A shape's current value, changed a little by every [`Generator::next_into`].
#[derive(Debug)]
pub struct Generator {
    rng: Rng,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Tick(Tick),
    Book(Book),
    Doc(Doc),
}

impl Generator {
    pub fn new(shape: Shape, seed: u64) -> Generator {
        let mut rng = Rng::new(seed);
        let value = match shape {
            Shape::Tick => Value::Tick(Tick::new()),
            Shape::Book => Value::Book(Book::new(&mut rng)),
            Shape::Doc => Value::Doc(Doc::new(&mut rng)),
        };
        Generator { rng, value }
    }

    /// Changes the value a little and appends it as JSON, stamped `sent_us`.
    pub fn next_into(&mut self, sent_us: u64, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let mut text = String::new();
        match &mut self.value {
            Value::Tick(t) => {
                t.step(rng);
                t.write(sent_us, &mut text);
            }
            Value::Book(b) => {
                b.step(rng);
                b.write(sent_us, &mut text);
            }
            Value::Doc(d) => {
                d.step(rng);
                d.write(sent_us, &mut text);
            }
        }
        out.extend_from_slice(text.as_bytes());
    }
}

fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

/// A fixed-point number with `decimals` digits after the point.
fn fixed(out: &mut String, v: u64, decimals: u32) {
    let unit = 10u64.pow(decimals);
    let _ = write!(out, "{}.{:0w$}", v / unit, v % unit, w = decimals as usize);
}

/// Prices in cents.
#[derive(Debug)]
struct Tick {
    price: u64,
    bid: u64,
    ask: u64,
}

impl Tick {
    fn new() -> Tick {
        Tick {
            price: 6_412_345,
            bid: 6_412_340,
            ask: 6_412_350,
        }
    }

    /// The price moves by 1–10 cents; the bid, the ask or both follow within 1–5 cents of it,
    /// each to a value other than the one it had.
    fn step(&mut self, rng: &mut Rng) {
        let d = 1 + below(rng, 10);
        self.price = if below(rng, 2) == 0 {
            self.price + d
        } else {
            self.price - d
        };
        let which = below(rng, 3);
        if which != 1 {
            self.bid = fresh(rng, self.bid, |r| self.price - 1 - below(r, 5));
        }
        if which != 0 {
            self.ask = fresh(rng, self.ask, |r| self.price + 1 + below(r, 5));
        }
    }

    fn write(&self, sent_us: u64, out: &mut String) {
        out.push_str(r#"{"symbol":"BTC-USD","price":"#);
        fixed(out, self.price, 2);
        out.push_str(r#","bid":"#);
        fixed(out, self.bid, 2);
        out.push_str(r#","ask":"#);
        fixed(out, self.ask, 2);
        let _ = write!(out, r#","ts":{sent_us}}}"#);
    }
}

/// A value from `pick` that differs from `old`.
fn fresh(rng: &mut Rng, old: u64, mut pick: impl FnMut(&mut Rng) -> u64) -> u64 {
    loop {
        let v = pick(rng);
        if v != old {
            return v;
        }
    }
}

const LEVELS: usize = 50;

/// Prices in cents, sizes in 1e-8.
#[derive(Debug)]
struct Book {
    bids: Vec<(u64, u64)>,
    asks: Vec<(u64, u64)>,
}

impl Book {
    fn new(rng: &mut Rng) -> Book {
        let mid = 6_412_345;
        let mut size = || below(rng, 10 * 100_000_000);
        Book {
            bids: (0..LEVELS as u64).map(|i| (mid - 50 * (i + 1), size())).collect(),
            asks: (0..LEVELS as u64).map(|i| (mid + 50 * (i + 1), size())).collect(),
        }
    }

    /// 2–4 distinct levels get a new size.
    fn step(&mut self, rng: &mut Rng) {
        let k = 2 + below(rng, 3) as usize;
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        while picked.len() < k {
            let i = below(rng, 2 * LEVELS as u64) as usize;
            if !picked.contains(&i) {
                picked.push(i);
            }
        }
        for i in picked {
            let level = match i < LEVELS {
                true => &mut self.bids[i],
                false => &mut self.asks[i - LEVELS],
            };
            level.1 = fresh(rng, level.1, |r| below(r, 10 * 100_000_000));
        }
    }

    fn write(&self, sent_us: u64, out: &mut String) {
        let _ = write!(out, r#"{{"ts":{sent_us},"bids":["#);
        Self::side(&self.bids, out);
        out.push_str(r#"],"asks":["#);
        Self::side(&self.asks, out);
        out.push_str("]}");
    }

    fn side(levels: &[(u64, u64)], out: &mut String) {
        for (i, &(price, size)) in levels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("[\"");
            fixed(out, price * 1_000_000, 8);
            out.push_str("\",\"");
            fixed(out, size, 8);
            out.push_str("\"]");
        }
    }
}

/// Words of the document's text: some multi-byte in UTF-8 (2, 3 and 4 bytes), so that deltas
/// are exercised across character boundaries.
const WORDS: &[&str] = &[
    "market",
    "open",
    "close",
    "volume",
    "trend",
    "report",
    "quarter",
    "growth",
    "risk",
    "yield",
    "naïve",
    "café",
    "résumé",
    "Zürich",
    "São",
    "Paulo",
    "Ελλάδα",
    "東京",
    "データ",
    "🚀",
    "déjà",
    "vu",
    "übermäßig",
    "fiancée",
    "coöperate",
    "señor",
    "Ørsted",
    "Kraków",
    "Beyoncé",
    "smörgåsbord",
];
const STATUSES: &[&str] = &["draft", "review", "approved", "published", "archived", "rejected"];
const NAMES: &[&str] = &[
    "Zoë Müller",
    "José Álvarez",
    "Ingrid Bjørnsdóttir",
    "Chloé Dubois",
    "Jürgen Groß",
    "Ana Lúcia",
    "Søren Kierkegaard",
    "Renée Côté",
    "Łukasz Wójcik",
    "Hélène Brûlé",
];
const CITIES: &[&str] = &[
    "Zürich",
    "São Paulo",
    "Kraków",
    "Malmö",
    "Montréal",
    "Reykjavík",
    "東京",
    "Αθήνα",
];
const SECTIONS: usize = 10;
const BODY_WORDS: usize = 40;

#[derive(Debug)]
struct Section {
    heading: Vec<usize>,
    status: usize,
    editor: usize,
    city: usize,
    score: u64,
    tags: [usize; 2],
    body: Vec<usize>,
}

#[derive(Debug)]
struct Doc {
    sections: Vec<Section>,
}

impl Doc {
    fn new(rng: &mut Rng) -> Doc {
        let mut pick = |n: usize| below(rng, n as u64) as usize;
        let sections = (0..SECTIONS)
            .map(|_| Section {
                heading: (0..3).map(|_| pick(WORDS.len())).collect(),
                status: pick(STATUSES.len()),
                editor: pick(NAMES.len()),
                city: pick(CITIES.len()),
                score: pick(10_000) as u64,
                tags: [pick(WORDS.len()), pick(WORDS.len())],
                body: (0..BODY_WORDS).map(|_| pick(WORDS.len())).collect(),
            })
            .collect();
        Doc { sections }
    }

    /// Exactly one field of one section changes (one word, for the heading and the body).
    fn step(&mut self, rng: &mut Rng) {
        let s = &mut self.sections[below(rng, SECTIONS as u64) as usize];
        let other =
            |rng: &mut Rng, old: usize, n: usize| fresh(rng, old as u64, |r| below(r, n as u64)) as usize;
        match below(rng, 7) {
            0 => s.status = other(rng, s.status, STATUSES.len()),
            1 => s.editor = other(rng, s.editor, NAMES.len()),
            2 => s.city = other(rng, s.city, CITIES.len()),
            3 => s.score = fresh(rng, s.score, |r| below(r, 10_000)),
            4 => {
                let t = below(rng, 2) as usize;
                s.tags[t] = other(rng, s.tags[t], WORDS.len());
            }
            5 => {
                let w = below(rng, s.heading.len() as u64) as usize;
                s.heading[w] = other(rng, s.heading[w], WORDS.len());
            }
            _ => {
                let w = below(rng, s.body.len() as u64) as usize;
                s.body[w] = other(rng, s.body[w], WORDS.len());
            }
        }
    }

    fn write(&self, sent_us: u64, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"ts":{sent_us},"id":"doc-42","kind":"report","lang":"multi","sections":["#
        );
        for (i, s) in self.sections.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let words = |ws: &[usize]| ws.iter().map(|&w| WORDS[w]).collect::<Vec<_>>().join(" ");
            let _ = write!(out, r#"{{"n":{i},"heading":"#);
            string(out, &words(&s.heading));
            out.push_str(r#","status":"#);
            string(out, STATUSES[s.status]);
            out.push_str(r#","editor":{"name":"#);
            string(out, NAMES[s.editor]);
            out.push_str(r#","city":"#);
            string(out, CITIES[s.city]);
            let _ = write!(out, r#"}},"score":{},"tags":["#, s.score);
            string(out, WORDS[s.tags[0]]);
            out.push(',');
            string(out, WORDS[s.tags[1]]);
            out.push_str(r#"],"body":"#);
            string(out, &words(&s.body));
            out.push('}');
        }
        out.push_str("]}");
    }
}

/// A JSON string (non-ASCII characters as they are, as a server passes them through).
fn string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn values(shape: Shape, seed: u64, n: usize) -> Vec<String> {
        let mut g = Generator::new(shape, seed);
        (0..n)
            .map(|i| {
                let mut out = Vec::new();
                g.next_into(1_732_560_000_000_000 + i as u64, &mut out);
                String::from_utf8(out).expect("UTF-8")
            })
            .collect()
    }

    /// Leaf paths whose values differ between `a` and `b` (same structure), `ts` left out.
    fn changed(a: &Json, b: &Json, path: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Json::Object(x), Json::Object(y)) => {
                assert_eq!(x.len(), y.len(), "{path}");
                for (k, v) in x.iter().filter(|(k, _)| *k != "ts") {
                    changed(v, &y[k], &format!("{path}.{k}"), out);
                }
            }
            (Json::Array(x), Json::Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}");
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    changed(v, w, &format!("{path}[{i}]"), out);
                }
            }
            (x, y) if x != y => out.push(path.to_string()),
            _ => {}
        }
    }

    fn changes(shape: Shape) -> Vec<Vec<String>> {
        let v = values(shape, 7, 300);
        (v.windows(2))
            .map(|w| {
                let (a, b): (Json, Json) = (
                    serde_json::from_str(&w[0]).unwrap(),
                    serde_json::from_str(&w[1]).unwrap(),
                );
                let mut out = Vec::new();
                changed(&a, &b, "", &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn sizes_and_stamps() {
        for (shape, lo, hi) in [
            (Shape::Tick, 80, 120),
            (Shape::Book, 2900, 3500),
            (Shape::Doc, 4500, 5600),
        ] {
            for (i, v) in values(shape, 1, 50).iter().enumerate() {
                assert!((lo..=hi).contains(&v.len()), "{shape:?}: {} bytes", v.len());
                let j: Json = serde_json::from_str(v).unwrap();
                assert_eq!(j["ts"], 1_732_560_000_000_000u64 + i as u64, "{shape:?}");
            }
        }
        let doc = &values(Shape::Doc, 1, 1)[0];
        assert!(
            doc.len() > doc.chars().count() + 100,
            "the doc has multi-byte characters"
        );
        assert!(doc.starts_with(r#"{"ts":"#) && values(Shape::Book, 1, 1)[0].starts_with(r#"{"ts":"#));
    }

    #[test]
    fn each_update_changes_a_little() {
        for c in changes(Shape::Tick) {
            assert!((2..=3).contains(&c.len()), "tick: {c:?}");
            assert!(c.contains(&".price".to_string()), "{c:?}");
        }
        for c in changes(Shape::Book) {
            assert!((2..=4).contains(&c.len()), "book: {c:?}");
            // a size, never a price
            assert!(c.iter().all(|p| p.ends_with("[1]")), "{c:?}");
        }
        let doc = changes(Shape::Doc);
        for c in &doc {
            assert_eq!(c.len(), 1, "doc: {c:?}");
        }
        // Every kind of field gets its turn.
        for field in [
            "status",
            "editor.name",
            "editor.city",
            "score",
            "tags",
            "heading",
            "body",
        ] {
            assert!(doc.iter().any(|c| c[0].contains(field)), "{field} never changed");
        }
    }

    #[test]
    fn deterministic_from_the_seed() {
        for shape in [Shape::Tick, Shape::Book, Shape::Doc] {
            assert_eq!(values(shape, 3, 20), values(shape, 3, 20));
            if shape != Shape::Tick {
                assert_ne!(values(shape, 3, 1), values(shape, 4, 1));
            }
        }
    }
}
