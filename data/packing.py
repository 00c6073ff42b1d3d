"""Document boundaries inside packed token samples.

Samples are cut from one stream of concatenated documents, each ended by EOS, so a row of `inputs` usually holds the
tail of one document, some whole ones, and the head of another. Models that reset per-document state (attention
masks, fast-weight memories) need, per token, which document it belongs to and its position inside that document.

Convention: the EOS token belongs to the document it ends; a new document starts at t if inputs[:, t-1] == eos_id.
Position 0 of every row starts document 0 (we cannot know whether the row began mid-document, and it does not
matter: the model never sees the tokens before the row).
"""

import torch


def segment_ids(inputs: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token document index and in-document position.

    inputs: [b, s] integer token ids.
    Returns (doc_ids [b, s] int64, positions [b, s] int64): doc_ids start at 0 in every row and step by +1 right
    after each EOS (so they are non-decreasing); positions count 0, 1, 2, ... and restart at 0 where doc_ids steps.
    Vectorised: a cumsum of start flags for doc_ids, a running max of start indices for positions.
    """
    if inputs.dim() != 2:
        raise ValueError(f"segment_ids expects inputs of shape [b, s], got {tuple(inputs.shape)}")
    b, s = inputs.shape
    starts = torch.zeros(b, s, dtype=torch.bool, device=inputs.device)
    starts[:, 1:] = inputs[:, :-1] == eos_id  # t starts a document iff t-1 is an EOS
    doc_ids = starts.long().cumsum(dim=1)
    t = torch.arange(s, device=inputs.device).expand(b, s)
    # index of the most recent document start at or before t (row start counts as one: 0)
    last_start = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values
    return doc_ids, t - last_start
