//! Listeners, the reconnect loop and shutdown (in progress).
