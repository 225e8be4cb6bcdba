"""Errors a user can fix. Command-line tools print them as one line and exit with code 2."""


class GanError(Exception):
    """Base of every error caused by bad input (config, data, checkpoint, output directory)."""


class ConfigError(GanError):
    pass


class DatasetError(GanError):
    pass


class CheckpointError(GanError):
    pass


class DivergedError(RuntimeError):
    """A loss became NaN or infinite: the run cannot continue (not an input error)."""

    def __init__(self, step: int, loss_name: str, value: float):
        self.step, self.loss_name, self.value = step, loss_name, value
        super().__init__(f"training diverged at step {step}: {loss_name} = {value}")


class InjectedFault(RuntimeError):
    """Raised on purpose (TrainConfig.fault = "raise"): a stand-in for a crashing trial."""
