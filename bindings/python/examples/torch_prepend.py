"""Prompt-tune a frozen PyTorch model with ulpt.torch, Hugging Face style.

The model is a small causal transformer with random weights, frozen, called with
``inputs_embeds`` as a Hugging Face model is; its input embeddings come from its own
embedding table.  A rank-2 ULPT prompt of 8 soft tokens is prepended to every sequence
and trained so that the model answers each sequence with the label token of its class
(sequences of low tokens -> "A", of high tokens -> "B").  Only the prompt's Z, s and b
(16 + 2*64 numbers) learn; torch's AdamW steps them in libulpt's memory.

    python3 torch_prepend.py [--steps N] [--library-optimizer] [--save DIR]
"""
import argparse

import torch

import ulpt
import ulpt.torch

VOCAB, DIM, SEQ, BATCH = 32, 64, 6, 32
LABEL_A, LABEL_B = 30, 31


class TinyCausalLM(torch.nn.Module):
    """A stand-in for a Hugging Face causal LM: embeddings, transformer, LM head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        layer = torch.nn.TransformerEncoderLayer(DIM, 4, 4 * DIM, dropout=0.0,
                                                 batch_first=True)
        self.body = torch.nn.TransformerEncoder(layer, 2)
        self.head = torch.nn.Linear(DIM, VOCAB)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds):
        t = inputs_embeds.shape[1]
        causal = torch.triu(torch.full((t, t), float("-inf")), diagonal=1)
        return self.head(self.body(inputs_embeds, mask=causal))


def batch(gen):
    """Sequences of low (0..14) or high (15..29) tokens and their label tokens."""
    high = torch.randint(0, 2, (BATCH,), generator=gen)
    ids = torch.randint(0, 15, (BATCH, SEQ), generator=gen) + 15 * high[:, None]
    return ids, torch.where(high == 1, LABEL_B, LABEL_A)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--library-optimizer", action="store_true",
                    help="step with ulpt.Optimizer instead of torch.optim.AdamW")
    ap.add_argument("--save", help="save_pretrained the prompt into this directory")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = TinyCausalLM().eval().requires_grad_(False)          # frozen
    soft = ulpt.torch.ULPTPrompt(n_tokens=8, dim=DIM, rank=2, projection_seed=1, init_seed=1,
                                 init_std=0.5)
    soft.prompt.meta["model"] = "tiny-causal-lm"
    if args.library_optimizer:
        lib_opt = ulpt.Optimizer(soft.prompt, lr=0.3)
    else:
        opt = torch.optim.AdamW(soft.parameters(), lr=0.3, weight_decay=0.0)

    gen = torch.Generator().manual_seed(1)
    first = last = None
    for step in range(args.steps):
        ids, labels = batch(gen)
        embeds = model.get_input_embeddings()(ids)                # (batch, seq, dim)
        logits = model(inputs_embeds=soft.prepend(embeds))        # (batch, 8 + seq, vocab)
        loss = torch.nn.functional.cross_entropy(logits[:, -1], labels)
        if args.library_optimizer:
            lib_opt.zero_grad()
            loss.backward()
            lib_opt.step()
        else:
            opt.zero_grad()
            loss.backward()
            opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
        if step % 25 == 0 or step == args.steps - 1:
            print("step %4d  loss %.4f" % (step, last))
    with torch.no_grad():
        ids, labels = batch(torch.Generator().manual_seed(99))
        logits = model(inputs_embeds=soft.prepend(model.get_input_embeddings()(ids)))
        accuracy = (logits[:, -1].argmax(-1) == labels).float().mean().item()
    print("loss %.4f -> %.4f; accuracy on a fresh batch %.0f%%; %d trainable numbers"
          % (first, last, 100 * accuracy, sum(p.numel() for p in soft.parameters())))
    if args.save:
        soft.save_pretrained(args.save)
        print("saved", args.save)


if __name__ == "__main__":
    main()
