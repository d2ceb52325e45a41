//! Lower-case hex for byte strings in the JSON output (paths and xattrs need not be UTF-8).

pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
