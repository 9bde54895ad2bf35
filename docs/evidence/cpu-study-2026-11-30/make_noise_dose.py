"""noise_dose.csv: what alpha 5 means for SmolLM2-135M and Gemma-3-270M embeddings, on the same 16 Alpaca
examples in the Alpaca prompt, and the alpha that gives Gemma SmolLM2's dose.

    NEFTLIB_DATA_DIR=/path/to/data python docs/evidence/cpu-study-2026-11-30/make_noise_dose.py
(Gemma needs `pip install '.[gemma]'`.)
"""
from pathlib import Path

from neftlib.data.prepare import load_instructions
from neftlib.training.dose import dose_table
from neftlib.base.io import write_csv

rows, _ = load_instructions("alpaca", seed=0, limit=16, drop_bad=True)
table = dose_table(["smollm2-135m-instruct", "gemma-3-270m"], rows, 5.0, prompt_format="alpaca", max_length=256)
write_csv(Path(__file__).with_name("noise_dose.csv"), table.to_dict("records"))
print(table.to_string())
