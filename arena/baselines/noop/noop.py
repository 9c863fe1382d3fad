"""No-op attack: returns the clean waveform unchanged (the reference point, dWER = 0)."""
from arena import Attack


class NoOp(Attack):
    track = "attack"

    def run(self, batch, model, budget):
        return batch.wave.clone()
