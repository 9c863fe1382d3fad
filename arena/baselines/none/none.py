"""No defense: the model transcribes the input as given (Defense's default behaviour)."""
from arena import Defense


class NoDefense(Defense):
    track = "defense"

    def purify(self, wave, lengths):
        return wave
