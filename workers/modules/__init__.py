"""The three annotation modules of SPEC section 3: plan, interjections, vqa."""
