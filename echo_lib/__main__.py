from echo_lib.cli import app

app(prog_name="echoctl")
