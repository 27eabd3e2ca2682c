//! Repair tasks made from ../shared/data with fixed seeds (ProRepair Section 6.2):
//! MNIST loading ([`mnist`]), MNIST-C-style corruptions ([`corrupt`]), and the task
//! builders and evaluation figures below (test accuracy, generalisation on held-out
//! failing inputs, property satisfaction, time).

pub mod adversarial;
pub mod backdoor;
pub mod corrupt;
pub mod gzip;
pub mod mnist;

use rayon::prelude::*;

use crate::model::Network;
use crate::repair::points::Point;
use corrupt::Corruption;
use mnist::{Dataset, argmax};

/// A point-repair task: the points to repair and held-out failing inputs of the same
/// kind (generalisation set).
#[derive(Clone, Debug, Default)]
pub struct PointTask {
    /// Misclassified inputs with their true labels, to be repaired.
    pub repair: Vec<Point>,
    /// Held-out inputs of the same kind that the original network misclassifies.
    pub generalisation: Vec<Point>,
}

/// The inputs among `indices` that `net` misclassifies after `make(i)` (up to `limit`).
fn failing(
    net: &Network,
    data: &Dataset,
    indices: std::ops::Range<usize>,
    limit: usize,
    make: &(dyn Fn(usize) -> Vec<f64> + Sync),
) -> Vec<Point> {
    let mut pts: Vec<(usize, Point)> = indices
        .into_par_iter()
        .filter_map(|i| {
            let x = make(i);
            (argmax(&net.forward(&x)) != data.labels[i]).then(|| {
                (
                    i,
                    Point {
                        x,
                        label: data.labels[i],
                    },
                )
            })
        })
        .collect();
    pts.sort_by_key(|p| p.0);
    pts.into_iter().take(limit).map(|p| p.1).collect()
}

/// The corruption task of ProRepair Section 6.2.1: repair set = the first `n_repair`
/// corrupted test images among indices 0-999 that `net` misclassifies; generalisation =
/// the corrupted images of indices 1000-9999 that it misclassifies. Image `i` is
/// corrupted with seed `seed ^ i`.
pub fn corruption_task(
    net: &Network,
    test: &Dataset,
    kind: Corruption,
    n_repair: usize,
    seed: u64,
) -> PointTask {
    let make = |i: usize| kind.apply(&test.images[i], seed ^ i as u64);
    let end = test.len().min(10_000);
    PointTask {
        repair: failing(net, test, 0..end.min(1000), n_repair, &make),
        generalisation: failing(net, test, end.min(1000)..end, usize::MAX, &make),
    }
}

/// Fraction of `points` that `net` classifies as required (argmax, f64).
pub fn point_accuracy(net: &Network, points: &[Point]) -> f64 {
    let ok = points
        .par_iter()
        .filter(|p| argmax(&net.forward(&p.x)) == p.label)
        .count();
    ok as f64 / points.len().max(1) as f64
}

/// Every `step`-th image of `data` (a spread sample, e.g. fidelity inputs).
pub fn every(data: &Dataset, step: usize) -> Vec<Vec<f64>> {
    data.images.iter().step_by(step.max(1)).cloned().collect()
}
