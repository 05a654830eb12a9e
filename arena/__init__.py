"""The A/B arena: a person compares two served models blind, and each vote counts twice.

- `scenes.py`: the show's system brief and the held-out scenes the "random held-out prompt" button draws from;
- `endpoint.py`: which server to ask and with which key (flag, `SERVE_URL`, or the local deploy record);
- `duel.py`: both models continue one scene with the same settings, streamed side by side;
- `rounds.py`: one round (scene, hidden left/right order, answers) and the vote line it becomes;
- `votes.py`: the crash-safe vote log (one complete line per vote) and the running tally;
- `limits.py`: the most tokens per answer, and samples and votes per session and per minute;
- `export.py`: decided votes -> TRL preference rows for `split` and `train`;
- `page.py`: the Gradio page (no API routes); `cli.py`: `python -m pipelines.dpo arena [export]`.
"""
