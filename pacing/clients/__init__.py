"""The outside systems' clients: the Stat Server's (and the statistics it returns) and the
engagement platform's, over the HTTP helpers they share."""
