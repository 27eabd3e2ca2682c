//! Reading gzip files (the MNIST IDX and CSV files of ../shared/data) through `flate2`.

use std::io::Read;

/// Decode a gzip file's bytes (all members concatenated, as `gzip -d` does); bytes that
/// do not start with the gzip magic are returned unchanged (an already decompressed
/// file). A malformed or truncated stream is an error, never a panic.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    if !data.starts_with(&[0x1f, 0x8b]) {
        return Ok(data.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a valid gzip stream: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_members_plain_bytes_and_truncation() {
        // `printf 'hello hello hello\n' | gzip -n` (fixed Huffman, one back-reference).
        let gz = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9,
            0xc9, 0x57, 0xc8, 0x40, 0x90, 0x5c, 0x00, 0x3b, 0x7c, 0x8a, 0xdf, 0x12, 0x00, 0x00,
            0x00,
        ];
        assert_eq!(decompress(&gz).unwrap(), b"hello hello hello\n");
        let two: Vec<u8> = gz.iter().chain(gz.iter()).copied().collect();
        assert_eq!(
            decompress(&two).unwrap(),
            b"hello hello hello\nhello hello hello\n"
        );
        assert_eq!(decompress(b"plain").unwrap(), b"plain");
        assert!(decompress(&gz[..15]).is_err());
    }
}
