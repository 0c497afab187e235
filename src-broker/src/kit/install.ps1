# Passerelle agent kit for Windows, made by `passerelle agent kit` for tenant @@TENANT@@.
# Uses the built-in OpenSSH client (Settings > Optional features > OpenSSH Client). Makes the
# agent's key HERE (it never leaves this machine), enrols it when the kit carries an enrolment
# token (else prints it for an admin to register), pins the broker's host key, and installs a
# scheduled task, run as SYSTEM at start-up, that keeps `ssh -N -R ...` running with back-off.
#
#   powershell -ExecutionPolicy Bypass -File install.ps1 [-Id ID] [-NoStart]
#Requires -RunAsAdministrator
param([string]$Id = '', [switch]$NoStart)
$ErrorActionPreference = 'Stop'

$BrokerHost = @@SSH_HOST@@
$BrokerPort = @@SSH_PORT@@
$PublicUrl = @@PUBLIC_URL@@
$AgentId = @@AGENT_ID@@
$Forwards = @(@@FORWARDS_PS@@)

if ($Id) { $AgentId = $Id } elseif (-not $AgentId) { $AgentId = $env:COMPUTERNAME.ToLowerInvariant() }
if ($AgentId -cnotmatch '^[A-Za-z0-9._-]+$') {
    throw "agent id '$AgentId' must be ASCII letters, digits, '.', '_', '-' (give -Id)"
}
$OpenSsh = Join-Path $env:WINDIR 'System32\OpenSSH'
$Ssh = Join-Path $OpenSsh 'ssh.exe'
$Keygen = Join-Path $OpenSsh 'ssh-keygen.exe'
if (-not (Test-Path $Ssh)) {
    throw 'the OpenSSH client is missing: Add-WindowsCapability -Online -Name OpenSSH.Client~~~~0.0.1.0'
}

# SYSTEM and Administrators only: OpenSSH refuses a private key others can read.
$Dir = Join-Path $env:ProgramData 'Passerelle\agent'
New-Item -ItemType Directory -Force -Path $Dir | Out-Null
& icacls.exe $Dir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null
if ($LASTEXITCODE -ne 0) { throw "icacls failed on $Dir" }

# The key is made here and never leaves this machine; an existing one is kept (re-install).
$Key = Join-Path $Dir 'id_ed25519'
if (-not (Test-Path $Key)) {
    # One argument string, so that the empty passphrase survives every PowerShell version.
    $p = Start-Process -FilePath $Keygen -Wait -NoNewWindow -PassThru -ArgumentList `
        "-q -t ed25519 -N `"`" -C passerelle-agent-$AgentId -f `"$Key`""
    if ($p.ExitCode -ne 0) { throw 'ssh-keygen failed' }
}
$PublicKey = (Get-Content -Raw "$Key.pub").Trim()
Copy-Item -Force (Join-Path $PSScriptRoot 'known_hosts') (Join-Path $Dir 'known_hosts')

$TokenFile = Join-Path $PSScriptRoot 'enroll-token'
if (Test-Path $TokenFile) {
    # The broker's TLS certificate must be trusted by this machine (a public CA, or the
    # broker's certificate deployed to LocalMachine\Root by GPO).
    # Windows PowerShell 5.1 may not offer TLS 1.2 by default.
    [Net.ServicePointManager]::SecurityProtocol = [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    $Body = @{ token = (Get-Content -Raw $TokenFile).Trim(); id = $AgentId; public_key = $PublicKey } | ConvertTo-Json
    $Answer = Invoke-RestMethod -Method Post -Uri "$PublicUrl/api/v1/enroll" -ContentType 'application/json' -Body $Body
    Write-Output "enrolled as $($Answer.id) in tenant $($Answer.tenant)"
} else {
    Write-Output 'Register this agent''s key on the broker (admin), then start the task:'
    Write-Output "  passerelle agent add --tenant @@TENANT_PLAIN@@ $AgentId --public-key '$PublicKey'"
}

# The loop the task runs: ssh, and after it ends a pause that doubles (5 s up to 5 min),
# back to 5 s after a connection that lasted over a minute.
$SshArgs = @('-N', '-F', 'none', '-o', 'BatchMode=yes', '-o', 'ExitOnForwardFailure=yes',
    '-o', 'ServerAliveInterval=15', '-o', 'ServerAliveCountMax=3', '-o', 'ConnectTimeout=30',
    '-o', 'StrictHostKeyChecking=yes', '-o', "UserKnownHostsFile=`"$Dir\known_hosts`"",
    '-o', 'GlobalKnownHostsFile=NUL', '-o', 'IdentitiesOnly=yes', '-i', "`"$Key`"",
    '-p', "$BrokerPort") + $Forwards + @('-l', $AgentId, $BrokerHost)
$Loop = @"
`$delay = 5
while (`$true) {
    `$started = Get-Date
    & '$Ssh' $($SshArgs -join ' ')
    if (((Get-Date) - `$started).TotalSeconds -gt 60) { `$delay = 5 }
    Start-Sleep -Seconds `$delay
    `$delay = [Math]::Min(`$delay * 2, 300)
}
"@
$Runner = Join-Path $Dir 'agent.ps1'
Set-Content -Path $Runner -Value $Loop -Encoding ASCII

$Action = New-ScheduledTaskAction -Execute 'powershell.exe' `
    -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$Runner`""
$Trigger = New-ScheduledTaskTrigger -AtStartup
$Principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Highest
$Settings = New-ScheduledTaskSettingsSet -ExecutionTimeLimit ([TimeSpan]::Zero) `
    -RestartCount 999 -RestartInterval (New-TimeSpan -Minutes 1) -MultipleInstances IgnoreNew `
    -AllowStartIfOnBatteries -DontStopIfGoingOnBatteries -StartWhenAvailable
Register-ScheduledTask -TaskName 'Passerelle agent' -Force -Action $Action -Trigger $Trigger `
    -Principal $Principal -Settings $Settings | Out-Null
if (-not $NoStart) {
    Start-ScheduledTask -TaskName 'Passerelle agent'
    Write-Output 'scheduled task "Passerelle agent" started'
}
