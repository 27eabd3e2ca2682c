//! MNIST data: IDX image/label files and `pixels..., label` CSV files (gzip or plain),
//! read into pixels scaled to [0, 1] (the ERAN networks take pixels/255).

use std::path::Path;

use super::gzip;

/// Images (each 784 values in [0, 1], row-major 28x28) with their labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// Flattened images.
    pub images: Vec<Vec<f64>>,
    /// Labels 0..=9.
    pub labels: Vec<usize>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    gzip::decompress(&raw).map_err(|e| format!("{}: {e}", path.display()))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Pixels of an IDX3 image file (`ubyte`, magic 0x803), scaled to [0, 1].
pub fn read_idx_images(path: &Path) -> Result<Vec<Vec<f64>>, String> {
    let b = read(path)?;
    let bad = |m: &str| format!("{}: {m}", path.display());
    if b.len() < 16 || be32(&b, 0) != 0x803 {
        return Err(bad("not an IDX3 ubyte image file (magic 0x00000803)"));
    }
    let (n, rows, cols) = (
        be32(&b, 4) as usize,
        be32(&b, 8) as usize,
        be32(&b, 12) as usize,
    );
    let size = rows * cols;
    // Checked: the counts come from the file, and a huge header must be an error, not
    // an overflow.
    let expected = n.checked_mul(size).and_then(|p| p.checked_add(16));
    if size == 0 {
        return Err(bad(&format!("images of {rows}x{cols} pixels")));
    }
    if Some(b.len()) != expected {
        return Err(bad(&format!(
            "{} bytes of pixels, the header says {n} images of {rows}x{cols}",
            b.len() - 16
        )));
    }
    Ok(b[16..]
        .chunks(size.max(1))
        .map(|img| img.iter().map(|&p| f64::from(p) / 255.0).collect())
        .collect())
}

/// Labels of an IDX1 label file (`ubyte`, magic 0x801).
pub fn read_idx_labels(path: &Path) -> Result<Vec<usize>, String> {
    let b = read(path)?;
    let bad = |m: &str| format!("{}: {m}", path.display());
    if b.len() < 8 || be32(&b, 0) != 0x801 {
        return Err(bad("not an IDX1 ubyte label file (magic 0x00000801)"));
    }
    let n = be32(&b, 4) as usize;
    if b.len() != 8 + n {
        return Err(bad(&format!("{} labels, the header says {n}", b.len() - 8)));
    }
    Ok(b[8..].iter().map(|&l| l as usize).collect())
}

/// IDX images plus labels, checked to agree in number.
pub fn read_idx(images: &Path, labels: &Path) -> Result<Dataset, String> {
    let images_v = read_idx_images(images)?;
    let labels_v = read_idx_labels(labels)?;
    if images_v.len() != labels_v.len() {
        return Err(format!(
            "{} has {} images but {} has {} labels",
            images.display(),
            images_v.len(),
            labels.display(),
            labels_v.len()
        ));
    }
    Ok(Dataset {
        images: images_v,
        labels: labels_v,
    })
}

/// The official MNIST test set from a data directory (`t10k-*-ubyte.gz`).
pub fn test_set(mnist_dir: &Path) -> Result<Dataset, String> {
    read_idx(
        &mnist_dir.join("t10k-images-idx3-ubyte.gz"),
        &mnist_dir.join("t10k-labels-idx1-ubyte.gz"),
    )
}

/// A CSV of raw pixels 0..=255 then the label per row (`mnist_5k.csv.gz`), scaled to [0, 1].
pub fn read_csv_255(path: &Path) -> Result<Dataset, String> {
    let b = read(path)?;
    let text = String::from_utf8(b).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let mut d = Dataset::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Vec<f64> = line
            .split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{}: line {}: not a number", path.display(), i + 1))?;
        let Some((&label, px)) = v.split_last() else {
            continue;
        };
        if !(0.0..10.0).contains(&label) || label.fract() != 0.0 {
            return Err(format!(
                "{}: line {}: label {label} is not 0..9",
                path.display(),
                i + 1
            ));
        }
        d.images.push(px.iter().map(|p| p / 255.0).collect());
        d.labels.push(label as usize);
    }
    Ok(d)
}

/// Index of the largest value (first on ties).
pub fn argmax(y: &[f64]) -> usize {
    (1..y.len()).fold(0, |b, i| if y[i] > y[b] { i } else { b })
}

/// Every `step`-th image of `data` that `net` classifies correctly, in order: the
/// fidelity inputs of the MNIST repairs (images whose behaviour the repair must keep).
pub fn correctly_classified(
    net: &crate::model::Network,
    data: &Dataset,
    step: usize,
) -> Vec<Vec<f64>> {
    (0..data.len())
        .filter(|&i| argmax(&net.forward(&data.images[i])) == data.labels[i])
        .step_by(step.max(1))
        .map(|i| data.images[i].clone())
        .collect()
}

/// Fraction of `data` that `net` classifies correctly (argmax, f64 forward pass).
pub fn accuracy(net: &crate::model::Network, data: &Dataset) -> f64 {
    use rayon::prelude::*;
    let ok = data
        .images
        .par_iter()
        .zip(&data.labels)
        .filter(|(x, l)| argmax(&net.forward(x)) == **l)
        .count();
    ok as f64 / data.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_test_set_loads() {
        let dir = crate::require_data!("mnist");
        let d = test_set(&dir).unwrap();
        assert_eq!(d.len(), 10_000);
        assert_eq!(d.images[0].len(), 784);
        // The first test images are a 7, a 2, a 1 and a 0.
        assert_eq!(&d.labels[..4], &[7, 2, 1, 0]);
        assert!(d.images.iter().flatten().all(|p| (0.0..=1.0).contains(p)));
        let counts = (0..10).map(|c| d.labels.iter().filter(|&&l| l == c).count());
        assert_eq!(
            counts.collect::<Vec<_>>(),
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("prorepair-mnist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.idx");
        std::fs::write(
            &p,
            [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2],
        )
        .unwrap();
        let e = read_idx_images(&p).unwrap_err();
        assert!(e.contains("bad.idx") && e.contains("2 images"), "{e}");
        // Counts whose product overflows, and empty images: errors, not panics.
        let mut huge = vec![0u8, 0, 8, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        huge.extend([0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        std::fs::write(&p, &huge).unwrap();
        assert!(read_idx_images(&p).unwrap_err().contains("bad.idx"));
        std::fs::write(&p, [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 28]).unwrap();
        let e = read_idx_images(&p).unwrap_err();
        assert!(e.contains("0x28"), "{e}");
        let c = dir.join("bad.csv");
        std::fs::write(&c, "1,2,3\n1,x,3\n").unwrap();
        let e = read_csv_255(&c).unwrap_err();
        assert!(e.contains("bad.csv") && e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
