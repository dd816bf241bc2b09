"""util.validation.protocol bookkeeping: part fractions, support slice choice, query part assignment and the
counted slices (SPEC §6), by hand."""
from __future__ import annotations

import numpy as np
import pytest

from util.validation.protocol import (
    OrganMissingError,
    assign_parts,
    counted_slices,
    label_free_parts,
    organ_slices,
    organ_z_range,
    part_fractions,
    support_slice_indices,
)


def test_part_fractions():
    assert part_fractions(1) == [0.5]
    np.testing.assert_allclose(part_fractions(3), [1 / 6, 1 / 2, 5 / 6])
    # n = 5: 1/10 + i * (4/5) / 4 = 0.1, 0.3, 0.5, 0.7, 0.9
    np.testing.assert_allclose(part_fractions(5), [0.1, 0.3, 0.5, 0.7, 0.9])
    with pytest.raises(ValueError, match="n_sup_part=0"):
        part_fractions(0)


def test_support_slice_indices():
    # 12 organ slices 10..21: int(12/6)=2 -> 12, int(12/2)=6 -> 16, int(12*5/6)=10 -> 20
    zlist = list(range(10, 22))
    assert support_slice_indices(zlist, 3) == [12, 16, 20]
    assert support_slice_indices([7], 3) == [7, 7, 7]
    assert support_slice_indices([4, 5], 1) == [5]        # int(0.5 * 2) = 1
    # 7 slices 0..6: int(7/6)=1, int(3.5)=3, int(35/6)=int(5.83)=5
    assert support_slice_indices(list(range(7)), 3) == [1, 3, 5]
    with pytest.raises(OrganMissingError):
        support_slice_indices([], 3)


def test_assign_parts_by_hand():
    # z_min 4, z_max 13: width 9/3 = 3 -> z 4..6 part 0, 7..9 part 1, 10..12 part 2, 13 -> 3 -> 2;
    # slices below z_min give negative parts -> 0, above -> 2
    z = np.arange(0, 16)
    expected = [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    np.testing.assert_array_equal(assign_parts(z, 4, 13, 3), expected)
    # organ on one slice: part 0 everywhere (the reference's division by zero)
    np.testing.assert_array_equal(assign_parts(z, 5, 5, 3), np.zeros(16))
    # float floor division as the reference: width 10/3, (10 - 0) // 3.333.. = 2.0 (not 3)
    assert assign_parts([10], 0, 10, 3)[0] == 2
    np.testing.assert_array_equal(label_free_parts(6, 3), [0, 0, 1, 1, 2, 2])  # width 5/3


def test_counted_slices_and_ranges():
    lab = np.zeros((4, 4, 10), np.int16)
    lab[1, 1, 3] = 2
    lab[2, 2, 6] = 2
    lab[0, 0, 8] = 3
    np.testing.assert_array_equal(organ_slices(lab, 2), [3, 6])
    assert organ_z_range(lab, 2) == (3, 6)
    assert organ_z_range(lab, 4) is None
    np.testing.assert_array_equal(np.flatnonzero(counted_slices(10, 3, 6, 0)), [3, 4, 5, 6])
    np.testing.assert_array_equal(np.flatnonzero(counted_slices(10, 3, 6, 2)), range(1, 9))
