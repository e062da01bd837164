"""Data control: the whole contact book exported at any size (and, as it lands, a contact's own
data, erasure and retention). Sits above conversations, consent and audit; nothing imports it
but the URLs and commands."""
