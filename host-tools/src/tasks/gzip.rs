//! A small gzip (RFC 1952) / DEFLATE (RFC 1951) decoder for the MNIST files.
//!
//! Why our own: the workspace has no compression crate and adding one is not allowed
//! (every dependency change rebuilds the world for everyone); the MNIST files are a few
//! MB, so a plain table-free canonical-Huffman decoder is fast enough. Every malformed
//! stream gives an error, never a panic.

/// Decode a gzip file's bytes (all members concatenated); bytes that do not start with
/// the gzip magic are returned unchanged (an already decompressed file).
pub fn decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < 2 || data[0] != 0x1f || data[1] != 0x8b {
        return Ok(data.to_vec());
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let h = data.get(pos..pos + 10).ok_or("truncated gzip header")?;
        if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
            return Err("not a deflate gzip member".into());
        }
        let flags = h[3];
        pos += 10;
        if flags & 4 != 0 {
            let x = data.get(pos..pos + 2).ok_or("truncated gzip extra field")?;
            pos += 2 + (x[0] as usize | (x[1] as usize) << 8);
        }
        for bit in [8u8, 16] {
            if flags & bit != 0 {
                let end = data
                    .get(pos..)
                    .and_then(|d| d.iter().position(|&b| b == 0))
                    .ok_or("unterminated gzip name or comment")?;
                pos += end + 1;
            }
        }
        if flags & 2 != 0 {
            pos += 2;
        }
        let start = out.len();
        let used = inflate(data.get(pos..).ok_or("truncated gzip member")?, &mut out)?;
        pos += used;
        let t = data.get(pos..pos + 8).ok_or("truncated gzip trailer")?;
        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        if (out.len() - start) as u32 != size {
            return Err("gzip size check failed".into());
        }
        pos += 8;
    }
    Ok(out)
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    bit: u32,
}

impl Bits<'_> {
    fn get(&mut self, n: u32) -> Result<u32, String> {
        let mut v = 0u32;
        for i in 0..n {
            let byte = *self.data.get(self.pos).ok_or("truncated deflate stream")?;
            v |= (((byte >> self.bit) & 1) as u32) << i;
            self.bit += 1;
            if self.bit == 8 {
                self.bit = 0;
                self.pos += 1;
            }
        }
        Ok(v)
    }
}

/// Canonical Huffman code: counts per length and symbols in code order.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Result<Self, String> {
        let mut counts = [0u16; 16];
        for &l in lengths {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut offs = [0u16; 16];
        for i in 1..15 {
            offs[i + 1] = offs[i] + counts[i];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offs[l as usize] as usize] = s as u16;
                offs[l as usize] += 1;
            }
        }
        Ok(Self { counts, symbols })
    }

    fn decode(&self, b: &mut Bits<'_>) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= b.get(1)? as i32;
            let count = self.counts[len] as i32;
            if code - count < first {
                return self
                    .symbols
                    .get((index + code - first) as usize)
                    .copied()
                    .ok_or_else(|| "bad Huffman code".to_string());
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        Err("bad Huffman code".into())
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Inflate one raw DEFLATE stream into `out`; returns the bytes of `data` consumed.
fn inflate(data: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
    let mut b = Bits {
        data,
        pos: 0,
        bit: 0,
    };
    loop {
        let last = b.get(1)?;
        match b.get(2)? {
            0 => {
                if b.bit != 0 {
                    b.bit = 0;
                    b.pos += 1;
                }
                let h = data.get(b.pos..b.pos + 4).ok_or("truncated stored block")?;
                let len = u16::from_le_bytes([h[0], h[1]]) as usize;
                if len != !u16::from_le_bytes([h[2], h[3]]) as usize {
                    return Err("stored block length check failed".into());
                }
                b.pos += 4;
                out.extend_from_slice(
                    data.get(b.pos..b.pos + len)
                        .ok_or("truncated stored block")?,
                );
                b.pos += len;
            }
            1 => {
                let mut l = [8u8; 288];
                l[144..256].fill(9);
                l[256..280].fill(7);
                codes(&mut b, out, &Huffman::new(&l)?, &Huffman::new(&[5u8; 30])?)?;
            }
            2 => {
                let hlit = b.get(5)? as usize + 257;
                let hdist = b.get(5)? as usize + 1;
                let hclen = b.get(4)? as usize + 4;
                const ORDER: [usize; 19] = [
                    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                ];
                let mut cl = [0u8; 19];
                for &o in &ORDER[..hclen] {
                    cl[o] = b.get(3)? as u8;
                }
                let ch = Huffman::new(&cl)?;
                let mut lengths = vec![0u8; hlit + hdist];
                let mut i = 0;
                while i < hlit + hdist {
                    let sym = ch.decode(&mut b)?;
                    let (value, repeat) = match sym {
                        0..=15 => (sym as u8, 1),
                        16 => {
                            let prev = *lengths[..i].last().ok_or("repeat with no length")?;
                            (prev, 3 + b.get(2)? as usize)
                        }
                        17 => (0, 3 + b.get(3)? as usize),
                        _ => (0, 11 + b.get(7)? as usize),
                    };
                    if i + repeat > hlit + hdist {
                        return Err("too many code lengths".into());
                    }
                    lengths[i..i + repeat].fill(value);
                    i += repeat;
                }
                let lit = Huffman::new(&lengths[..hlit])?;
                let dist = Huffman::new(&lengths[hlit..])?;
                codes(&mut b, out, &lit, &dist)?;
            }
            _ => return Err("invalid deflate block type".into()),
        }
        if last == 1 {
            return Ok(b.pos + usize::from(b.bit != 0));
        }
    }
}

fn codes(b: &mut Bits<'_>, out: &mut Vec<u8>, lit: &Huffman, dist: &Huffman) -> Result<(), String> {
    loop {
        let sym = lit.decode(b)? as usize;
        match sym {
            0..=255 => out.push(sym as u8),
            256 => return Ok(()),
            257..=285 => {
                let i = sym - 257;
                let len = LEN_BASE[i] as usize + b.get(LEN_EXTRA[i] as u32)? as usize;
                let d = dist.decode(b)? as usize;
                if d >= 30 {
                    return Err("bad distance code".into());
                }
                let dist = DIST_BASE[d] as usize + b.get(DIST_EXTRA[d] as u32)? as usize;
                if dist > out.len() {
                    return Err("distance beyond the start of the output".into());
                }
                let from = out.len() - dist;
                for k in 0..len {
                    let v = out[from + k];
                    out.push(v);
                }
            }
            _ => return Err("bad literal/length code".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_and_fixed_blocks() {
        // `printf 'hello hello hello\n' | gzip -n` (fixed Huffman, one back-reference).
        let gz = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9,
            0xc9, 0x57, 0xc8, 0x40, 0x90, 0x5c, 0x00, 0x3b, 0x7c, 0x8a, 0xdf, 0x12, 0x00, 0x00,
            0x00,
        ];
        assert_eq!(decompress(&gz).unwrap(), b"hello hello hello\n");
        assert_eq!(decompress(b"plain").unwrap(), b"plain");
        assert!(decompress(&gz[..15]).is_err());
    }
}
