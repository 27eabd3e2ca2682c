//! The adversarial task of ProRepair Section 6.2.3 (Appendix B.1.3, following APRNN):
//! local-robustness boxes over the first `k` non-zero pixels of a buggy image.
//!
//! For an image `x` with true label `l`, the box perturbs the first `k` non-zero pixels
//! (row-major) by `±r`, clipped to the pixel range [0, 1], and fixes every other pixel;
//! the desired property is `f(x')_l > f(x')_j` for every other `j` on the whole box.
//! Buggy images are the ones the network misclassifies (so every box is violated at its
//! centre), drawn in a seeded random order from a training-like set (`mnist_5k`; the
//! paper draws them from the training set), one repair per box.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::mnist::{Dataset, argmax};
use crate::model::Network;
use crate::repair::RepairProperty;
use crate::verify::{Case, Conj};

/// One task: the image it was made from and the property to repair.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxTask {
    /// Index of the image in its data set.
    pub index: usize,
    /// The true label.
    pub label: usize,
    /// The box property (one case).
    pub property: RepairProperty,
}

/// The box over the first `k` non-zero pixels of `x` at radius `r` (clipped to [0, 1],
/// other pixels fixed) with the unsafe set `OR_j (y_label - y_j <= 0)`, `j != label` (a
/// tie counts as unsafe).
pub fn local_box(x: &[f64], label: usize, k: usize, r: f64, n_out: usize) -> Case {
    let (mut lower, mut upper) = (x.to_vec(), x.to_vec());
    for j in (0..x.len()).filter(|&j| x[j] != 0.0).take(k) {
        lower[j] = (x[j] - r).max(0.0);
        upper[j] = (x[j] + r).min(1.0);
    }
    let unsafe_set = (0..n_out)
        .filter(|&j| j != label)
        .map(|j| {
            let mut row = vec![0.0; n_out];
            row[label] = 1.0;
            row[j] = -1.0;
            Conj {
                rows: vec![row],
                rhs: vec![0.0],
            }
        })
        .collect();
    Case {
        lower,
        upper,
        unsafe_set,
    }
}

/// Indices of the images of `data` that `net` misclassifies, in a random order fixed by
/// `seed` (the same images for every `k`).
pub fn buggy_indices(net: &Network, data: &Dataset, seed: u64) -> Vec<usize> {
    use rayon::prelude::*;
    let mut idx: Vec<usize> = (0..data.len())
        .into_par_iter()
        .filter(|&i| argmax(&net.forward(&data.images[i])) != data.labels[i])
        .collect();
    idx.sort_unstable();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx
}

/// The first `n` tasks of [`buggy_indices`] at (`k`, `r`).
pub fn adversarial_tasks(
    net: &Network,
    data: &Dataset,
    k: usize,
    r: f64,
    n: usize,
    seed: u64,
) -> Vec<BoxTask> {
    buggy_indices(net, data, seed)
        .into_iter()
        .take(n)
        .map(|i| BoxTask {
            index: i,
            label: data.labels[i],
            property: RepairProperty {
                name: format!("image {i} (label {}), k {k}, r {r}", data.labels[i]),
                cases: vec![local_box(
                    &data.images[i],
                    data.labels[i],
                    k,
                    r,
                    net.output_dim(),
                )],
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_perturbs_the_first_k_nonzero_pixels_only() {
        // Binary fractions: the bounds are exact. Pixel 5 is the fourth non-zero one.
        let x = vec![0.0, 0.5, 0.0, 0.875, 0.125, 0.3];
        let c = local_box(&x, 1, 3, 0.25, 3);
        assert_eq!(c.lower, vec![0.0, 0.25, 0.0, 0.625, 0.0, 0.3]);
        assert_eq!(c.upper, vec![0.0, 0.75, 0.0, 1.0, 0.375, 0.3]);
        // Unsafe: y_1 - y_0 <= 0 or y_1 - y_2 <= 0.
        assert_eq!(c.unsafe_set.len(), 2);
        assert_eq!(c.unsafe_set[0].rows[0], vec![-1.0, 1.0, 0.0]);
        assert_eq!(c.unsafe_set[1].rows[0], vec![0.0, 1.0, -1.0]);
        assert!(c.unsafe_set.iter().all(|k| k.rhs == vec![0.0]));
    }
}
