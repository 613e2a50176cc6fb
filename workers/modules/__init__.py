"""The three annotation modules of docs/CONTRACT.md §3: plan, interjections, vqa."""
