//! Trace and span ids. Backends write them as hex of any case (Jaeger v1 may send 64-bit trace ids,
//! Tempo strips leading zeros) or as base64 (Tempo's and Jaeger's protobuf JSON); both parse here.

use std::fmt;

use base64::Engine as _;

/// Why an id could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} id {value:?}: {reason}")]
pub struct IdError {
    kind: &'static str,
    value: String,
    reason: &'static str,
}

/// A 128-bit trace id; 64-bit ids are left-padded with zeros, as Jaeger and Zipkin do.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

/// Value of each ASCII hex digit; `NOT_HEX` for every other byte.
const HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};
const NOT_HEX: u8 = 0xff;

/// Decodes hex (up to `N * 2` digits, left-padded) or, failing that, base64 of exactly `N` bytes
/// or fewer (left-padded).
fn decode<const N: usize>(kind: &'static str, s: &str) -> Result<[u8; N], IdError> {
    let err = |reason| IdError {
        kind,
        value: s.chars().take(80).collect(),
        reason,
    };
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut out = [0u8; N];
    // Most ids are hex of full length: one pass, checked once at the end.
    if s.len() == N * 2 {
        let mut seen = 0u8;
        for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            let (high, low) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
            seen |= high | low;
            *o = (high << 4) | low;
        }
        if seen & 0xf0 == 0 {
            return Ok(out);
        }
        out = [0u8; N];
    }
    if s.len() <= N * 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let digits = s.as_bytes();
        // Right-align the digits; an odd count gets an implicit leading zero.
        for (nibble, &d) in (N * 2 - digits.len()..).zip(digits) {
            let v = HEX[d as usize];
            out[nibble / 2] |= if nibble.is_multiple_of(2) { v << 4 } else { v };
        }
        return Ok(out);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| err("neither hex nor base64"))?;
    if bytes.is_empty() || bytes.len() > N {
        return Err(err("wrong length"));
    }
    out[N - bytes.len()..].copy_from_slice(&bytes);
    Ok(out)
}

impl TraceId {
    /// Parses hex or base64.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        decode::<16>("trace", s).map(Self)
    }

    /// True for the all-zero id, which OTLP treats as invalid.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// 32 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.hex().as_str().to_owned()
    }

    /// 32 lower-case hex digits, without an allocation.
    pub fn hex(&self) -> HexId {
        HexId::of(&self.0)
    }
}

impl SpanId {
    /// Parses hex or base64.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        decode::<8>("span", s).map(Self)
    }

    /// True for the all-zero id, which means "no span" (for example no parent).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    /// 16 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        self.hex().as_str().to_owned()
    }

    /// 16 lower-case hex digits, without an allocation.
    pub fn hex(&self) -> HexId {
        HexId::of(&self.0)
    }
}

/// An id written as lower-case hex, held on the stack: the writers put three in every span.
#[derive(Clone, Copy)]
pub struct HexId {
    digits: [u8; 32],
    len: u8,
}

impl HexId {
    fn of(bytes: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 32];
        for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        Self {
            digits,
            len: (bytes.len() * 2).min(32) as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits were written.
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl serde::Serialize for HexId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}
impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}
impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex().as_str())
    }
}
impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl serde::Serialize for SpanId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_any_width_and_case_is_left_padded() {
        let id = TraceId::parse("5B8EFFF798038103D269B633813FC60C").unwrap();
        assert_eq!(id.to_hex(), "5b8efff798038103d269b633813fc60c");
        assert_eq!(
            TraceId::parse("2be38093ead7a083").unwrap().to_hex(),
            "00000000000000002be38093ead7a083"
        );
        // Tempo strips leading zeros, sometimes to an odd number of digits.
        assert_eq!(
            TraceId::parse("abc").unwrap().to_hex(),
            "00000000000000000000000000000abc"
        );
    }

    #[test]
    fn base64_ids_decode() {
        assert_eq!(
            TraceId::parse("W47/95gDgQPSabYzgT/HAA==").unwrap().to_hex(),
            "5b8efff798038103d269b633813fc700"
        );
        assert_eq!(
            SpanId::parse("AAAAAAAAAAI=").unwrap().to_hex(),
            "0000000000000002"
        );
    }

    #[test]
    fn garbage_is_refused_with_the_value() {
        let e = SpanId::parse("not an id!").unwrap_err();
        assert!(e.to_string().contains("not an id!"), "{e}");
        assert!(SpanId::parse("").is_err());
        assert!(
            SpanId::parse("00112233445566778899").is_err(),
            "too long for a span id"
        );
    }

    #[test]
    fn a_full_length_id_with_one_digit_not_hex_is_refused_wherever_it_is() {
        let good = "5b8efff798038103d269b633813fc60c";
        for at in 0..good.len() {
            for bad in ["g", "G", "-", " ", "/", ":", "@", "`", "\u{7f}"] {
                let id = format!("{}{bad}{}", &good[..at], &good[at + 1..]);
                assert!(TraceId::parse(&id).is_err(), "{id:?} taken as an id");
                assert!(SpanId::parse(&id[..16]).is_err() || at >= 16, "{id:?}");
            }
        }
        assert_eq!(TraceId::parse(good).unwrap().to_hex(), good);
    }
}
