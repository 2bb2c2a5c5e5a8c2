//! `OTEL_EXPORTER_OTLP_HEADERS`: `key1=value1,key2=value2`, values percent-decoded. The
//! text comes from the environment, so any string is accepted without a panic.

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `key1=value1,key2=value2` (values URL-decoded).
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("OTLP header {pair:?} is not key=value"))?;
            Ok((k.trim().to_string(), percent_decode(v.trim())))
        })
        .collect()
}

/// Decodes `%XX` escapes byte-wise (a `%` not followed by two hex digits stays as it is);
/// bytes that do not form UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes.get(i + 1..i + 3).and_then(hex_byte)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Two ASCII hex digits as a byte.
fn hex_byte(digits: &[u8]) -> Option<u8> {
    let digit = |d: u8| (d as char).to_digit(16);
    match digits {
        [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small xorshift generator: reproducible inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[(self.next() % from.len() as u64) as usize]
        }
    }

    #[test]
    fn escapes_next_to_multibyte_characters_do_not_panic() {
        // Slicing the str at byte offsets panicked here: the byte after '%' starts a
        // multibyte character.
        assert_eq!(percent_decode("%é"), "%é");
        assert_eq!(percent_decode("a%4é"), "a%4é");
        assert_eq!(percent_decode("%e9"), "\u{fffd}", "a lone Latin-1 byte");
        assert_eq!(percent_decode("%C3%A9t%C3%A9"), "été");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%%41"), "%A");
        assert_eq!(
            parse_headers("k=日本%20語, x=%").unwrap(),
            vec![("k".into(), "日本 語".into()), ("x".into(), "%".into())]
        );
    }

    #[test]
    fn any_text_decodes_without_panic_and_escaped_text_decodes_to_itself() {
        let pieces = [
            "%", "%%", "%4", "%41", "%zz", "%C3", "%A9", "é", "日", "🦀", "a", "=", ",", " ",
            "%\u{0}", "\u{7f}",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let n = rng.next() % 12;
            let text: String = (0..n).map(|_| rng.pick(&pieces)).collect();
            let _ = percent_decode(&text);
            let _ = parse_headers(&text);
            // Every byte of a string escaped, or a random mix of escaped and plain
            // characters, decodes back to the string.
            let mut escaped = String::new();
            for c in text.chars() {
                if c != '%' && rng.next().is_multiple_of(2) {
                    escaped.push(c);
                } else {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        escaped.push_str(&format!("%{b:02X}"));
                    }
                }
            }
            assert_eq!(percent_decode(&escaped), text, "{escaped:?}");
        }
        // Arbitrary bytes, as the environment may hold them (made valid UTF-8 first, as
        // `std::env::var` would refuse them otherwise).
        for _ in 0..5_000 {
            let bytes: Vec<u8> = (0..rng.next() % 16).map(|_| rng.next() as u8).collect();
            let text = String::from_utf8_lossy(&bytes);
            let _ = percent_decode(&text);
            let _ = parse_headers(&text);
        }
    }
}
