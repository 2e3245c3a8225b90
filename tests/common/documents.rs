//! Random JSON documents for the delta tests: a deterministic generator (splitmix64, so a
//! failure reproduces) and documents whose fields change a few at a time, with ASCII, multi-byte
//! UTF-8 and JSON escapes, kept as written (spaces included) so they can be checked byte for
//! byte; and publishing such text over HTTP exactly as written.

use std::net::SocketAddr;

use super::http::http_post;

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The next version of a document of `size` fields (`fields` holds them between calls): a few
/// change each time.
pub fn next_document(rng: &mut Rng, fields: &mut Vec<String>, size: usize) -> String {
    const WORDS: [&str; 9] = [
        "price",
        "é",
        "мир",
        "🟢",
        "中文",
        r#"\"quoted\""#,
        r"back\\slash",
        r"line\nbreak",
        r"tab\t",
    ];
    if fields.is_empty() {
        *fields = (0..size)
            .map(|i| format!("\"{}-{i}\"", WORDS[i % WORDS.len()]))
            .collect();
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(fields.len());
        fields[i] = match rng.below(3) {
            0 => rng.next().to_string(),
            1 => format!("\"{} {}\"", WORDS[rng.below(9)], WORDS[rng.below(9)]),
            _ => format!("{{\"bid\": {}, \"ask\": [1, 2.5, null]}}", rng.below(1000)),
        };
    }
    let body: Vec<String> = (fields.iter().enumerate())
        .map(|(i, v)| format!("\"k{i}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// Publishes `data` (JSON text) over HTTP as written, returning its seq.
pub async fn publish_text(addr: SocketAddr, topic: &str, data: &str) -> u64 {
    let body = format!("{{\"topic\":\"{topic}\",\"data\":{data}}}");
    let response = http_post(addr, "/api/v1/publish", body.as_bytes()).await;
    assert_eq!(response.status, 200, "{:?}", response.json());
    response.json()["seq"].as_u64().unwrap()
}
