//! A simulated NOR flash for host-side tests of the OTA protocol (feature `std`): the
//! core's own tests, the workspace's end-to-end tests, the fuzz targets, and a
//! firmware team's tests of its integration all drive [`super::install`] and
//! [`super::boot`] over the same storage model.

use std::vec;
use std::vec::Vec;

use super::{Area, RECORD_SIZE, Storage};
use crate::Error;

/// NOR flash semantics: erase sets every byte to 0xFF, a write can only clear bits.
/// Power loss can be injected at any erase/write step ([`SimFlash::fail_after`]): that
/// step is torn (half done) and every later access fails until [`SimFlash::reboot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFlash {
    areas: [Vec<u8>; 4],
    steps: usize,
    fail_at: Option<usize>,
    dead: bool,
}

impl SimFlash {
    /// Erased flash with two patch slots of `slot_capacity` bytes and two record areas.
    pub fn new(slot_capacity: usize) -> Self {
        SimFlash {
            areas: [
                vec![0xFF; slot_capacity],
                vec![0xFF; slot_capacity],
                vec![0xFF; RECORD_SIZE],
                vec![0xFF; RECORD_SIZE],
            ],
            steps: 0,
            fail_at: None,
            dead: false,
        }
    }

    /// Erase/write steps done so far (reads do not count).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Lose power during the `k`-th erase/write step from now (0 = the next one).
    pub fn fail_after(&mut self, k: usize) {
        self.fail_at = self.steps.checked_add(k);
    }

    /// Power is back: accesses work again and no failure is pending.
    pub fn reboot(&mut self) {
        self.dead = false;
        self.fail_at = None;
    }

    /// The contents of every area (slot A, slot B, record A, record B).
    pub fn areas(&self) -> &[Vec<u8>; 4] {
        &self.areas
    }

    /// The bytes of one area, writable (e.g. to simulate bit rot).
    pub fn area_mut(&mut self, area: Area) -> &mut [u8] {
        self.bytes(area)
    }

    fn bytes(&mut self, area: Area) -> &mut [u8] {
        // `Area` is `repr(u8)`, 0..=3 in the order of `areas`.
        self.areas
            .get_mut(area as usize)
            .map_or(&mut [], Vec::as_mut_slice)
    }

    /// Count an erase/write step; `Ok(true)` when power is lost during it.
    fn step(&mut self) -> Result<bool, Error> {
        if self.dead {
            return Err(Error::StorageFailure);
        }
        let torn = self.fail_at == Some(self.steps);
        self.steps += 1;
        Ok(torn)
    }

    fn lose_power_if(&mut self, torn: bool) -> Result<(), Error> {
        if torn {
            self.dead = true;
            return Err(Error::StorageFailure);
        }
        Ok(())
    }
}

impl Storage for SimFlash {
    fn slot_capacity(&self) -> usize {
        self.areas.first().map_or(0, Vec::len)
    }

    fn read(&mut self, area: Area, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        if self.dead {
            return Err(Error::StorageFailure);
        }
        let end = offset.checked_add(buf.len()).ok_or(Error::StorageFailure)?;
        let src = self
            .bytes(area)
            .get(offset..end)
            .ok_or(Error::StorageFailure)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn erase(&mut self, area: Area) -> Result<(), Error> {
        let torn = self.step()?;
        let a = self.bytes(area);
        let n = if torn { a.len() / 2 } else { a.len() };
        a.iter_mut().take(n).for_each(|b| *b = 0xFF);
        self.lose_power_if(torn)
    }

    fn write(&mut self, area: Area, offset: usize, data: &[u8]) -> Result<(), Error> {
        let torn = self.step()?;
        let end = offset
            .checked_add(data.len())
            .ok_or(Error::StorageFailure)?;
        let dst = self
            .bytes(area)
            .get_mut(offset..end)
            .ok_or(Error::StorageFailure)?;
        let n = if torn { data.len() / 2 } else { data.len() };
        for (d, s) in dst.iter_mut().zip(data).take(n) {
            *d &= *s;
        }
        self.lose_power_if(torn)
    }
}
