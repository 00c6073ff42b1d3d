"""The driver's console: one tqdm bar (step, loss, tokens/s, lr) and one-line messages above it."""
from __future__ import annotations

import sys


class ProgressPrinter:
    def __init__(self, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.total = total_steps
        self.bar = None

    def _ensure_bar(self, step: int) -> None:
        if self.bar is None and self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stdout, mininterval=0.5)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def handle(self, msg: dict) -> None:
        if "message" in msg:
            self.write(f"[lactron] {msg['message']}")
        elif "checkpoint" in msg:
            self.write(f"[lactron] step {msg['step']}: checkpoint {msg['checkpoint']}")
        elif "val_loss" in msg:
            self.write(f"[lactron] step {msg['step']}: val loss {msg['val_loss']:.4f}")
        elif "loss" in msg:
            if not self.enabled:
                print(f"step {msg['step']}/{msg['steps']} loss {msg['loss']:.4f} lr {msg['lr']:.2e} "
                      f"{msg['tokens_per_s']:,.0f} tok/s", flush=True)
                return
            self._ensure_bar(msg["step"])
            self.bar.n = msg["step"]
            self.bar.set_postfix(loss=f"{msg['loss']:.4f}", tok_s=f"{msg['tokens_per_s']:,.0f}",
                                 lr=f"{msg['lr']:.1e}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
