"""The ground floor: flags, their checks, errors, process environment, launch and run logging. Imports nothing
from clsa/, data_processing/ or the entry scripts."""
