"""Pure logic shared by training, replay and serving: the event contract,
codecs, windowed counters and feature assembly. No I/O, no Faust."""
