//! Hostname rules for table entries and query names.
//!
//! Table names are validated strictly at build time (RFC 1035 lengths, ASCII
//! only: internationalised names must arrive as punycode `xn--` labels, as DNS
//! carries them). Query names are hostile input: they are normalised into a
//! fixed stack buffer and simply fail to match when malformed, never panic.

/// Longest name in presentation form without the trailing dot (RFC 1035 §2.3.4:
/// 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Normalises and validates a name given in a table entry: one trailing dot
/// is dropped, letters are lower-cased. With `allow_wildcard`, a leftmost
/// label `*` followed by at least one more label is accepted.
///
/// Returns the reason on error; the caller names the entry and field.
pub fn normalize_table_name(raw: &str, allow_wildcard: bool) -> Result<String, String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    if name.is_empty() {
        return Err("empty name".into());
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii()) {
        return Err(format!("non-ASCII character {c:?}: internationalised names must be punycode (xn--...)"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name is {} characters long, the limit is {MAX_NAME_LEN}", name.len()));
    }
    for (i, label) in name.split('.').enumerate() {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("label {label:?} is {} characters long, the limit is {MAX_LABEL_LEN}", label.len()));
        }
        if label == "*" {
            if !allow_wildcard {
                return Err("wildcard label '*' is not allowed here".into());
            }
            if i != 0 {
                return Err("wildcard '*' must be the leftmost label".into());
            }
            if !name.contains('.') {
                return Err("a wildcard needs a parent domain ('*.example.com')".into());
            }
            continue;
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
            return Err(format!("character {c:?} is not allowed in a hostname label"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// A query name normalised for lookup: ASCII lower-case, no trailing dot,
/// held in a stack buffer so the lookup path allocates nothing.
#[derive(Clone)]
pub struct QueryName {
    buf: [u8; MAX_NAME_LEN],
    len: u8,
}

impl std::fmt::Debug for QueryName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QueryName").field(&self.as_str()).finish()
    }
}

impl QueryName {
    /// Normalises `raw` (any letter case, with or without one trailing dot).
    /// Returns `None` for names no table entry can ever match: empty,
    /// too long, empty or over-long labels, non-ASCII bytes, or a `*` (a
    /// literal wildcard is never answered: it would put `*` in an answer).
    pub fn new(raw: &[u8]) -> Option<QueryName> {
        let name = raw.strip_suffix(b".").unwrap_or(raw);
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return None;
        }
        let mut buf = [0u8; MAX_NAME_LEN];
        let mut label_len = 0usize;
        for (dst, &b) in buf.iter_mut().zip(name) {
            if b == b'.' {
                if label_len == 0 {
                    return None;
                }
                label_len = 0;
            } else {
                if !b.is_ascii() || b == b'*' {
                    return None;
                }
                label_len += 1;
                if label_len > MAX_LABEL_LEN {
                    return None;
                }
            }
            *dst = b.to_ascii_lowercase();
        }
        if label_len == 0 {
            return None;
        }
        Some(QueryName { buf, len: name.len() as u8 })
    }

    /// The normalised bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// The normalised name. Always valid UTF-8: `new` admits ASCII only.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_normalised() {
        assert_eq!(
            normalize_table_name("Product.Default.svc.cluster.local.", false).unwrap(),
            "product.default.svc.cluster.local"
        );
        assert_eq!(normalize_table_name("*.Example.com", true).unwrap(), "*.example.com");
        assert_eq!(normalize_table_name("_grpc._tcp.x", false).unwrap(), "_grpc._tcp.x");
    }

    #[test]
    fn bad_table_names_are_rejected() {
        for bad in ["", ".", "a..b", ".a", "bücher.de", "a b", "*", "a.*.b", "x.*"] {
            assert!(normalize_table_name(bad, true).is_err(), "{bad:?} accepted");
        }
        assert!(normalize_table_name("*.example.com", false).is_err());
        assert!(normalize_table_name(&"a".repeat(64), false).is_err());
        let long = vec!["abcdefghi"; 26].join(".");
        assert!(long.len() > MAX_NAME_LEN);
        assert!(normalize_table_name(&long, false).is_err());
    }

    #[test]
    fn query_names() {
        assert_eq!(QueryName::new(b"FoO.Bar.").unwrap().as_str(), "foo.bar");
        assert!(QueryName::new(b"").is_none());
        assert!(QueryName::new(b".").is_none());
        assert!(QueryName::new(b"a..b").is_none());
        assert!(QueryName::new(b".a").is_none());
        assert!(QueryName::new(b"a.b..").is_none());
        assert!(QueryName::new(b"*.a").is_none());
        assert!(QueryName::new("ü.a".as_bytes()).is_none());
        assert!(QueryName::new(&[b'a'; 254]).is_none());
    }
}
