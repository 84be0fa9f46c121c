"""The model server's command line (serve/command.py, with serve/app.py's loader, smoke test and app):

    python -m llmft.serve --model-uri models:/NAME@champion --registry-name NAME --port 5055 [--limits JSON]

`python -m llmft.serve.app` is the same command under the name that `deploy` (serve/deploy.py), the
systemd unit and the compose files start. Limits are refused at start, in one line, before any model
loads; the model answers a smoke request before the port opens.
"""

from llmft.serve.app import main

if __name__ == "__main__":
    main()
