//! How a rule condition is shown: JSON for the admin API (`Serialize`), text for
//! `canaryd check` and `canaryd route` (`Display`). Both sit side by side and match every
//! variant, so a new condition or test does not compile until it is rendered in both.

use super::{Condition, ValueTest};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt;

/// `{"header": {"equals": "always", "name": "x-canary"}}`, `{"client_ip": ["10.0.0.0/8"]}`.
impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Condition::Header { name, test } => m.serialize_entry(
                "header",
                &Named {
                    test,
                    name: name.as_str(),
                },
            )?,
            Condition::Cookie { name, test } => {
                m.serialize_entry("cookie", &Named { test, name })?
            }
            Condition::ClientIp(nets) => m.serialize_entry("client_ip", &Nets(nets))?,
        }
        m.end()
    }
}

/// `header x-canary equals "always"`, `client_ip in [10.0.0.0/8, 192.0.2.7/32]`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Header { name, test } => write!(f, "header {name} {test}"),
            Condition::Cookie { name, test } => write!(f, "cookie {name} {test}"),
            Condition::ClientIp(nets) => {
                f.write_str("client_ip in [")?;
                for (i, n) in nets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{n}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// `equals "always"`, `matches /^eu-/`, `present`, `absent`.
impl fmt::Display for ValueTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueTest::Equals(v) => write!(f, "equals {v:?}"),
            ValueTest::Matches(re) => write!(f, "matches /{}/", re.as_str()),
            ValueTest::Present(true) => f.write_str("present"),
            ValueTest::Present(false) => f.write_str("absent"),
        }
    }
}

/// A header or cookie test as JSON: the test as one key (`equals`, `matches`, `present`),
/// then `name`.
struct Named<'a> {
    test: &'a ValueTest,
    name: &'a str,
}

impl Serialize for Named<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        match self.test {
            ValueTest::Equals(v) => m.serialize_entry("equals", v)?,
            ValueTest::Matches(re) => m.serialize_entry("matches", re.as_str())?,
            ValueTest::Present(p) => m.serialize_entry("present", p)?,
        }
        m.serialize_entry("name", self.name)?;
        m.end()
    }
}

/// Networks as strings, as `client_ip` is written in the file.
struct Nets<'a>(&'a [ipnet::IpNet]);

impl Serialize for Nets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|n| n.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(c: Condition) -> (String, String) {
        (serde_json::to_string(&c).unwrap(), c.to_string())
    }

    #[test]
    fn every_condition_as_json_and_text() {
        let header = |test| Condition::Header {
            name: http::HeaderName::from_static("x-canary"),
            test,
        };
        assert_eq!(
            both(header(ValueTest::Equals("always".into()))),
            (
                r#"{"header":{"equals":"always","name":"x-canary"}}"#.into(),
                r#"header x-canary equals "always""#.into()
            )
        );
        assert_eq!(
            both(header(ValueTest::Present(false))),
            (
                r#"{"header":{"present":false,"name":"x-canary"}}"#.into(),
                "header x-canary absent".into()
            )
        );
        assert_eq!(
            both(Condition::Cookie {
                name: "beta".into(),
                test: ValueTest::Matches(regex::bytes::Regex::new("^1$").unwrap()),
            }),
            (
                r#"{"cookie":{"matches":"^1$","name":"beta"}}"#.into(),
                "cookie beta matches /^1$/".into()
            )
        );
        assert_eq!(
            both(Condition::ClientIp(vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ])),
            (
                r#"{"client_ip":["10.0.0.0/8","192.0.2.7/32"]}"#.into(),
                "client_ip in [10.0.0.0/8, 192.0.2.7/32]".into()
            )
        );
    }
}
