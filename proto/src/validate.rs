//! Checks of user-supplied names and metadata, shared by the daemon and clients.

use crate::{Meta, WireError};

/// Longest session name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Limits on a meta map; the defaults are the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLimits {
    /// Most pairs.
    pub max_entries: usize,
    /// Longest key, in bytes.
    pub max_key_len: usize,
    /// Longest value, in bytes.
    pub max_value_len: usize,
}

impl Default for MetaLimits {
    fn default() -> Self {
        MetaLimits {
            max_entries: 64,
            max_key_len: 128,
            max_value_len: 4096,
        }
    }
}

/// A session name: 1–128 bytes of `[A-Za-z0-9._-]`, first byte alphanumeric.
pub fn session_name(name: &str) -> Result<(), WireError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return Err(WireError::invalid(format!(
            "session name must be 1 to {MAX_NAME_LEN} bytes, got {}",
            bytes.len()
        )));
    }
    if !bytes[0].is_ascii_alphanumeric() {
        return Err(WireError::invalid(format!(
            "session name {name:?} must start with an ASCII letter or digit (then ASCII letters, digits, '.', '_' or '-')"
        )));
    }
    if let Some(bad) = bytes
        .iter()
        .find(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(b)))
    {
        return Err(WireError::invalid(format!(
            "session name {:?} contains {:?}; allowed are A-Z a-z 0-9 . _ -",
            name.escape_debug().to_string(),
            char::from(*bad)
        )));
    }
    Ok(())
}

/// Longest checkpoint key or attach key, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// A checkpoint's `key` or an attachment's `attach_key` (`what` says which): 1–256 bytes of
/// UTF-8 without control characters.
pub fn key(what: &str, key: &str) -> Result<(), WireError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(WireError::invalid(format!(
            "{what} must be 1 to {MAX_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(WireError::invalid(format!(
            "{what} {:?} contains the control character {:?}",
            key.escape_debug().to_string(),
            c
        )));
    }
    Ok(())
}

/// A meta map within `limits`.
pub fn meta(meta: &Meta, limits: &MetaLimits) -> Result<(), WireError> {
    if meta.len() > limits.max_entries {
        return Err(WireError::invalid(format!(
            "meta has {} entries; at most {} are allowed",
            meta.len(),
            limits.max_entries
        )));
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > limits.max_key_len {
            return Err(WireError::invalid(format!(
                "meta key {k:?} must be 1 to {} bytes",
                limits.max_key_len
            )));
        }
        if v.len() > limits.max_value_len {
            return Err(WireError::invalid(format!(
                "meta value of {k:?} is {} bytes; at most {} are allowed",
                v.len(),
                limits.max_value_len
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "A1", "job-1.2_x", "9", &"x".repeat(128)] {
            assert!(session_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".a",
            "-a",
            "a/b",
            "a\0b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            let err = session_name(bad).unwrap_err();
            assert_eq!(err.kind, crate::ErrorKind::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn keys() {
        for ok in ["a", "1ef3-…", "thread:1/ns 2", &"k".repeat(256)] {
            assert!(key("key", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\0b", "a\nb", "\u{7f}", &"k".repeat(257)] {
            let e = key("key", bad).unwrap_err();
            assert_eq!(e.kind, crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn meta_limits() {
        let l = MetaLimits::default();
        let mut m = Meta::new();
        m.insert("k".into(), "v".repeat(4096));
        assert!(meta(&m, &l).is_ok());
        m.insert("k".into(), "v".repeat(4097));
        assert!(meta(&m, &l).is_err());
        let m: Meta = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(meta(&m, &l).is_err());
        let m: Meta = [("k".repeat(129), String::new())].into();
        assert!(meta(&m, &l).is_err());
        let m: Meta = [(String::new(), String::new())].into();
        assert!(meta(&m, &l).is_err());
    }
}
