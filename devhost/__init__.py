"""devhost: runs the real function_app on one machine with local stand-ins for Azure. Never deployed."""
