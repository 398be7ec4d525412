"""What every stage uses: the typed config, the event contract, the lake, the Spark session, tracking and the registry."""
