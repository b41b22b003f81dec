#compdef mailctl

_mailctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _MAILCTL_COMPLETE=complete_zsh mailctl)
}

compdef _mailctl_completion mailctl
