//! Bytes as hex text and back: how manifests carry schemas, keys carry binary
//! literals, and errors carry their payload across a cluster's wire.

/// `bytes` as lower-case hex, two digits a byte.
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of `hex`, or why it is not hex: an odd length or a character that is not
/// a hex digit.
pub(crate) fn decode(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return Err("not pairs of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_round_trip_and_other_text_is_refused() {
        let bytes = [0u8, 1, 0x7f, 0xff];
        assert_eq!(super::encode(&bytes), "00017fff");
        assert_eq!(super::decode("00017fff").unwrap(), bytes);
        assert!(super::decode("abc").is_err());
        assert!(super::decode("zz").is_err());
        assert!(super::decode("é1").is_err());
    }
}
