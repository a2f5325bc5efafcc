"""The sans-I/O core: events and the current time in, requests to send and wake-ups out.

Nothing here touches a socket, a thread, a file or the wall clock.
"""
