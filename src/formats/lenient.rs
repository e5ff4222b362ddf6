//! Deserializers for the ways backends write the same value: 64-bit numbers as JSON numbers or
//! decimal strings, enums as numbers or names.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// An `i64` written as a number or a decimal string (`"1544712660000000000"`).
pub fn i64_any<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or a string holding one")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            if v.fract() == 0.0 && v.abs() < 9.2e18 {
                Ok(v as i64)
            } else {
                Err(E::custom(format!("{v} is not an integer")))
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            if v.is_empty() {
                return Ok(0);
            }
            v.parse()
                .map_err(|_| E::custom(format!("{v:?} is not an integer")))
        }
        fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V)
}

/// An `f64` written as a number or a string (`"NaN"`, `"1.5"`).
pub fn f64_any<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number or a string holding one")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => v
                    .parse()
                    .map_err(|_| E::custom(format!("{v:?} is not a number"))),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            // serde_json writes non-finite numbers as null.
            Ok(f64::NAN)
        }
    }
    d.deserialize_any(V)
}

/// An enum written as its number or its name; names are returned as `Err(name)` for the caller
/// to map, numbers as `Ok(n)`.
#[derive(Debug, Default)]
pub enum NumberOrName {
    #[default]
    Absent,
    Number(i64),
    Name(String),
}

impl<'de> serde::Deserialize<'de> for NumberOrName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumberOrName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an enum number or name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumberOrName, E> {
                Ok(NumberOrName::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumberOrName, E> {
                Ok(NumberOrName::Number(v.min(i64::MAX as u64) as i64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumberOrName, E> {
                Ok(NumberOrName::Name(v.to_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NumberOrName, E> {
                Ok(NumberOrName::Absent)
            }
        }
        d.deserialize_any(V)
    }
}
