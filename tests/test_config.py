"""TOML model files follow a schema: unknown keys and wrong types are errors that name them."""
import tomllib

import pytest

from gradflow import ConfigError
from gradflow.model.config import EXAMPLE, model_from_dict


def test_example_builds_the_model_it_describes():
    m = model_from_dict(tomllib.loads(EXAMPLE))
    assert m.grid == (4, 4) and m.mask_ratio == 0.5 and m.n_clusters == 2
    assert m.clusters[0].amplitudes[2].continuous == (0.5, 1.5)
    assert m.clusters[1].amplitudes[0].values.tolist() == [1.0]          # areas not named stay at z = 1
    assert m.clusters[1].amplitudes[1].weights.tolist() == [0.5, 0.5]


BASE = "mask_ratio = 0.5\nn_patches = 4\n[[clusters]]\nareas = [0, 0, 1, 1]\n"


@pytest.mark.parametrize("text, needle", [
    ("mask_ratio = 0.5\nn_patches = 4\nmask_ration = 0.3\n[[clusters]]\nareas = [0, 0, 1, 1]\n",
     r"unknown key 'mask_ration' \(did you mean 'mask_ratio'\?\)"),
    (BASE + "probability = 1.0\n", r"unknown key 'probability' \(did you mean 'prob'\?\)"),
    (BASE + "amplitude = { values = [1.0] }\n", r"'amplitude' \(did you mean 'amplitudes'\?\)"),
    ('mask_ratio = "0.5"\nn_patches = 4\n[[clusters]]\nareas = [0, 0, 1, 1]\n', "mask_ratio must be a number"),
    (BASE + "prob = '1'\n", "prob must be a number"),
    (BASE + "amplitudes = { uniform = [0.5, 1.5], 1 = { values = [2.0] } }\n", "mixes per-area tables"),
    (BASE + "amplitudes = { values = [1.0], weight = [1.0] }\n", "'weight'"),
    (BASE + "[clusters.amplitudes.5]\nvalues = [2.0]\n", "no area 5"),
    (BASE + "amplitudes = { uniform = [0.5, 1.5], n_atoms = 2.5 }\n", "n_atoms must be an integer"),
    ("mask_ratio = 0.5\ngrid = [2, 'a']\n[[clusters]]\nareas = [0, 0, 1, 1]\n", "grid"),
    ("mask_ratio = 0.5\nn_patches = 4\n", "clusters"),
])
def test_schema_errors_name_the_key(text, needle):
    with pytest.raises(ConfigError, match=needle):
        model_from_dict(tomllib.loads(text))
