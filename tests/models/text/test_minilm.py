import pytest
import torch

from latentworks.models.text.base import TextEncoder
from latentworks.models.text.minilm import MiniLMTextEncoder, minilm_path


@pytest.fixture(scope="module")
def enc():
    return MiniLMTextEncoder(max_length=16)


def test_shapes_mask_and_protocol(enc):
    assert isinstance(enc, TextEncoder)
    c = enc.encode(["red apple, twitter style", "", "a very long prompt " * 20])
    assert c.tokens.shape == (3, 16, 384) and c.mask.shape == (3, 16) and c.pooled.shape == (3, 384)
    assert c.mask.dtype == torch.bool
    # "" is [CLS] [SEP]; the long prompt is truncated to max_length.
    assert c.mask.sum(1).tolist()[1:] == [2, 16]
    assert torch.allclose(c.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_padding_does_not_change_pooled(enc):
    # The pooled vector of a padded prompt must equal the unpadded model's mean over its tokens.
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    model = AutoModel.from_pretrained(str(minilm_path()), local_files_only=True).eval()
    ids = tok(["grinning face"], return_tensors="pt")
    with torch.no_grad():
        h = model(**ids).last_hidden_state[0]  # (n, 384)
    want = torch.nn.functional.normalize(h.mean(0), dim=0)
    c = enc.encode(["grinning face"])
    n = ids["input_ids"].shape[1]
    assert torch.allclose(c.pooled[0], want, atol=1e-5)
    assert torch.allclose(c.tokens[0, :n], h, atol=1e-4)


def test_deterministic_and_semantic(enc):
    a = enc.encode(["red apple", "green apple", "blue car"])
    b = enc.encode(["red apple", "green apple", "blue car"])
    assert torch.equal(a.tokens, b.tokens)
    sim = a.pooled @ a.pooled.T
    assert sim[0, 1] > sim[0, 2]


def test_rejects_bare_string(enc):
    with pytest.raises(TypeError, match="list"):
        enc.encode("red apple")
