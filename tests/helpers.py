"""Test helpers: a config from flat field names, each routed to the section that holds it."""
import ml_collections


def override(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """Sets each field where it lives: the top level, or the one section (model, data, optim) that
  has it; a name that is nowhere is an error, as on the command line."""
  for name, value in fields.items():
    holders = [config] if name in config else [
        config[s] for s in config if isinstance(config[s], ml_collections.ConfigDict)
        and name in config[s]]
    if len(holders) != 1:
      raise KeyError(f'{name} is in {len(holders)} places of the config')
    holders[0][name] = value
  return config


def config_flags(**fields) -> list:
  """The same fields as command-line flags (`--config.data.batch_size=32`)."""
  from rsnets_jax import defaults  # pylint: disable=import-outside-toplevel
  base = defaults.get_config()
  flags = []
  for name, value in fields.items():
    section = '' if name in base else next(s for s in base if isinstance(
        base[s], ml_collections.ConfigDict) and name in base[s]) + '.'
    flags.append(f'--config.{section}{name}={value}')
  return flags
