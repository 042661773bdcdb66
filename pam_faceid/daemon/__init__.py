"""faceidd: the root daemon that holds the model and the enrolments and answers "is this the user?".

``server`` serves the socket (systemd activation, connections, slots,
signals, admin requests); the lockout, snapshot and journal modules keep its
state and its logs.
"""
