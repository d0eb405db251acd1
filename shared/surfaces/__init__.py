"""Entry translation: bytes and headers in; an HTTP answer, a chat reply or a queue settlement out.
Only this layer (and handlers/) knows HTTP."""
